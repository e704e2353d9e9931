# LLaVA-1.5-7B (CLIP ViT-L/14-336 + Vicuna-7B), stage 2: LoRA on the LLM, projector trained.
# Download the -hf checkpoint once (e.g. `huggingface-cli download llava-hf/llava-1.5-7b-hf --local-dir checkpoints/llava-1.5-7b-hf`).
_base_ = ["./_base_/schedule_lora.py", "./_base_/engine_zero2.py"]

# ---------------------------------------------------------------- Settings
model_path = "checkpoints/llava-1.5-7b-hf"
data_path = "data/train.json"
image_root = "data/images"
template = "vicuna_v1"
max_length = 2048
lora_r = 128

# ---------------------------------------------------------------- Model
model = dict(
    family="llava",
    path=model_path,
    vision=dict(train="frozen", select_layer=-2),
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
    tiling=dict(mode="pad_square", min_tiles=1, max_tiles=1, use_thumbnail=False),
)

schedule = dict(lr=2e-4, micro_batch_size=16, gradient_accumulation=1)
