# LLaVA-NeXT-7B (LLaVA-1.6: CLIP ViT-L/14-336 + Vicuna-7B, AnyRes tiles), stage 2: LoRA on the LLM, projector trained.
# Download the -hf checkpoint once (e.g. `huggingface-cli download llava-hf/llava-v1.6-vicuna-7b-hf --local-dir checkpoints/llava-v1.6-vicuna-7b-hf`).
_base_ = ["./_base_/schedule_lora.py", "./_base_/engine_zero2.py"]

# ---------------------------------------------------------------- Settings
model_path = "checkpoints/llava-v1.6-vicuna-7b-hf"
data_path = "data/train.json"
image_root = "data/images"
template = "vicuna_v1"
max_length = 4096      # a base image + up to 4 grid tiles of 576 tokens each, plus the text
lora_r = 128

# ---------------------------------------------------------------- Model
model = dict(
    family="llava_next",
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

schedule = dict(lr=2e-4, micro_batch_size=4, gradient_accumulation=4)
