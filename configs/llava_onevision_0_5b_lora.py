# LLaVA-OneVision-0.5B (SigLIP-so400m + Qwen2-0.5B, AnyRes with the anyres_max_9 budget), LoRA on the LLM,
# projector trained.
# Download the -hf checkpoint once (e.g. `huggingface-cli download llava-hf/llava-onevision-qwen2-0.5b-ov-hf --local-dir checkpoints/llava-onevision-qwen2-0.5b-ov-hf`).
_base_ = ["./_base_/schedule_lora.py", "./_base_/engine_zero2.py"]

# ---------------------------------------------------------------- Settings
model_path = "checkpoints/llava-onevision-qwen2-0.5b-ov-hf"
data_path = "data/train.json"
image_root = "data/images"
template = "chatml"    # Qwen2's chat format
max_length = 8192      # up to 729 tokens per tile, the grid shrunk to about 9 tiles, plus the text
lora_r = 64

# ---------------------------------------------------------------- Model
model = dict(
    family="llava_onevision",
    path=model_path,
    vision=dict(train="frozen"),          # feature layer and select strategy: the base's own
    connector=dict(downsample_ratio=1.0, train=True),
    llm=dict(train="lora", lora=dict(r=lora_r, alpha=2 * lora_r, dropout=0.05)),
    dtype="bfloat16",
    gradient_checkpointing=True,
)

# ---------------------------------------------------------------- Data
data = dict(
    datasets=[dict(path=data_path, image_root=image_root)],
    template=template,
    max_length=max_length,
    tiling=dict(mode="anyres"),           # grid_pinpoints unset: the base's own image_grid_pinpoints
)

schedule = dict(lr=1e-4, micro_batch_size=4, gradient_accumulation=4)
