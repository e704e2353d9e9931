# LLaVA-1.5-7B (-hf), stage 2 of a domain run: DPO on preference pairs (RLHF-V / LLaMA-Factory style), LoRA on the LLM.
# Start from your SFT run: `vlft train configs/llava_v1_5_7b_dpo.py --init-from work/llava/checkpoint-N`,
# or set model_path to a merged SFT model (`vlft merge`).
_base_ = ["./_base_/schedule_lora.py", "./_base_/engine_zero2.py"]

# ---------------------------------------------------------------- Settings
model_path = "checkpoints/llava-1.5-7b-hf"
data_path = "data/pairs.json"
image_root = "data/images"
template = "vicuna_v1"
max_length = 2048
lora_r = 64
beta = 0.1

# ---------------------------------------------------------------- Model
model = dict(
    family="llava",
    path=model_path,
    vision=dict(train="frozen", select_layer=-2),
    connector=dict(downsample_ratio=1.0, train=False),   # reference = the model with its adapters off
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
    packing=False,
    val_split=0.02,
)

schedule = dict(objective="dpo", beta=beta, lr=5e-5, micro_batch_size=4, gradient_accumulation=4, epochs=1)
