# InternVL2.5-1B / InternVL3-1B, stage 2 with MPO as InternVL trains its MPO models:
# preference (sigmoid DPO) 0.8 + quality (BCO) 0.2 + generation (SFT on the chosen) 1.0, LoRA on the LLM.
# Start from your SFT run: `vlft train configs/internvl2_5_1b_mpo.py --init-from work/food/checkpoint-N`
# (the reference is that checkpoint), or set model_path to a merged SFT model (`vlft merge`).
_base_ = ["./_base_/schedule_lora.py", "./_base_/engine_zero2.py"]

# ---------------------------------------------------------------- Settings
model_path = "checkpoints/InternVL2_5-1B"     # the base of the SFT run, or a merged SFT model
data_path = "data/mpo_pairs.jsonl"            # InternVL MPO JSONL (MMPR style), or another preference format
image_root = "data/images"
template = "internvl2_5"
max_length = 4096
max_tiles = 6
lora_r = 32
beta = 0.1

# ---------------------------------------------------------------- Model
model = dict(
    family="internvl",
    path=model_path,
    vision=dict(train="frozen"),
    # the connector stays as SFT left it: the reference is then the model with its adapters off
    connector=dict(downsample_ratio=0.5, train=False),
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
    packing=False,          # a pair trains as two padded rows
    val_split=0.02,
)

# InternVL's MPO recipe (beta 0.1, the three weights above); lr for LoRA.
schedule = dict(objective="mpo", beta=beta, preference_weight=0.8, quality_weight=0.2, generation_weight=1.0,
                lr=5e-5, micro_batch_size=2, gradient_accumulation=8, epochs=1)
