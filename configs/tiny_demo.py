# The embedded demo: a tiny InternVL-layout model written locally by `vlft demo` (paths set by the demo).
# Also the config tests build against; runs on one CPU in minutes.

# ---------------------------------------------------------------- Settings
model_path = "vlft-demo/base"
data_path = "vlft-demo/data/train.json"
image_root = "vlft-demo/data"
max_tiles = 4

model = dict(
    family="internvl",
    path=model_path,
    connector=dict(downsample_ratio=0.5, train=True),
    llm=dict(train="lora", lora=dict(r=16, alpha=32, dropout=0.0)),
    dtype="float32",
    attn_implementation="eager",
)

data = dict(
    datasets=[dict(path=data_path, image_root=image_root)],
    template="internvl2_5",
    max_length=512,
    tiling=dict(mode="dynamic", min_tiles=1, max_tiles=max_tiles, use_thumbnail=True),
)

schedule = dict(epochs=1, max_steps=60, micro_batch_size=4, gradient_accumulation=1, lr=2e-3, warmup_ratio=0.05,
                seed=0)

engine = dict(deepspeed="zero2", save_steps=1000, save_total_limit=1, logging_steps=5)
