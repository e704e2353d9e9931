# LLaVA-1.5 stage 1 (feature alignment): compose CLIP-L/336 + Vicuna from parts, train only the projector
# on captions with the `plain` template. LLaVA halves nothing here: stage 1 uses lr 1e-3, batch 256.
_base_ = ["./_base_/schedule_lora.py", "./_base_/engine_zero2.py"]

# ---------------------------------------------------------------- Settings
vision_path = "checkpoints/clip-vit-large-patch14-336"
llm_path = "checkpoints/vicuna-7b-v1.5"
data_path = "data/blip_laion_cc_sbu_558k.json"
image_root = "data/images"

model = dict(
    family="llava",
    vision=dict(path=vision_path, train="frozen", select_layer=-2),
    connector=dict(downsample_ratio=1.0, train=True),
    llm=dict(path=llm_path, train="frozen"),
    dtype="bfloat16",
)

data = dict(
    datasets=[dict(path=data_path, image_root=image_root)],
    template="plain",
    max_length=2048,
    tiling=dict(mode="pad_square", min_tiles=1, max_tiles=1, use_thumbnail=False),
)

schedule = dict(lr=1e-3, micro_batch_size=32, gradient_accumulation=1, warmup_ratio=0.03, weight_decay=0.0)
