# InternVL2.5-1B / InternVL3-1B (InternViT-300M-448px + Qwen2.5-0.5B), LoRA on the LLM, connector trained.
# Download the base once (e.g. `huggingface-cli download OpenGVLab/InternVL2_5-1B --local-dir checkpoints/InternVL2_5-1B`).
_base_ = ["./_base_/schedule_lora.py", "./_base_/engine_zero2.py"]

# ---------------------------------------------------------------- Settings
model_path = "checkpoints/InternVL2_5-1B"     # original InternVL-chat layout or the -hf twin
data_path = "data/train.json"
image_root = "data/images"
template = "internvl2_5"
max_length = 4096
max_tiles = 6
lora_r = 32

# ---------------------------------------------------------------- Model
model = dict(
    family="internvl",
    path=model_path,
    vision=dict(train="frozen"),
    connector=dict(downsample_ratio=0.5, train=True),
    llm=dict(train="lora", lora=dict(r=lora_r, alpha=2 * lora_r, dropout=0.05)),
    dtype="bfloat16",
    gradient_checkpointing=True,
)

# ---------------------------------------------------------------- Data
data = dict(
    datasets=[dict(path=data_path, image_root=image_root)],
    template=template,
    max_length=max_length,
    tiling=dict(mode="dynamic", min_tiles=1, max_tiles=max_tiles, use_thumbnail=True),
    packing=True,
)

schedule = dict(lr=1e-4)
