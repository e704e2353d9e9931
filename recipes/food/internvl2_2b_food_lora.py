# Food recognition on InternVL2-2B (InternViT-300M-448px + InternLM2-chat-1.8B): LoRA on the LLM, connector
# trained, vision frozen, DeepSpeed ZeRO-2, bf16. Tiling and template as InternVL's own LoRA fine-tuning
# scripts (max_dynamic_patch 6 + thumbnail, internlm2-chat, lr 4e-5, cosine, warmup 3%).
# Data: rows as recipes/food/convert_foodieqa.py writes them (see recipes/food/README.md).
#   vlft check-data recipes/food/internvl2_2b_food_lora.py
#   vlft train recipes/food/internvl2_2b_food_lora.py --work-dir work/food_lora
# GPU memory (an estimate, not a measurement; ~2k tokens per sample, gradient checkpointing): ~14 GB per GPU
# at micro batch 4, ~8 GB at micro batch 1 x accumulation 16. See recipes/food/README.md.
_base_ = ["../../configs/_base_/schedule_lora.py", "../../configs/_base_/engine_zero2.py"]

# ---------------------------------------------------------------- Settings
model_path = "checkpoints/InternVL2-2B"       # original InternVL-chat layout (or its -hf twin)
train_file = "data/food/food_train.json"       # your own food photos in the converter's layout
image_root = None                              # the converter writes absolute image paths
max_tiles = 6                                  # + a thumbnail tile
lora_r = 16                                    # InternVL's scripts use 16; 64-128 for larger domain shifts
lr = 4e-5

# ---------------------------------------------------------------- Model
model = dict(
    family="internvl",
    path=model_path,
    vision=dict(train="frozen"),
    connector=dict(downsample_ratio=0.5, train=True),   # InternVL's LoRA scripts freeze it: train=False
    llm=dict(train="lora", lora=dict(r=lora_r, alpha=2 * lora_r, dropout=0.05)),
    dtype="bfloat16",
    attn_implementation="sdpa",
    gradient_checkpointing=True,
)

# ---------------------------------------------------------------- Data
data = dict(
    datasets=[dict(path=train_file, image_root=image_root)],
    template="internlm2-chat",
    max_length=4096,
    tiling=dict(mode="dynamic", min_tiles=1, max_tiles=max_tiles, use_thumbnail=True),
    group_by_length=True,
)

# ---------------------------------------------------------------- Schedule (16 samples per step on 1 GPU)
schedule = dict(epochs=3, micro_batch_size=4, gradient_accumulation=4, lr=lr, weight_decay=0.01,
                warmup_ratio=0.03)

engine = dict(deepspeed="zero2", save_steps=200, save_total_limit=2, logging_steps=10)
