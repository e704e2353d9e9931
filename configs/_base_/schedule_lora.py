# Shared schedule for LoRA fine-tuning (InternVL's own LoRA scripts: lr 4e-5..1e-4, warmup 3%, cosine).
schedule = dict(
    epochs=1,
    micro_batch_size=4,
    gradient_accumulation=4,
    lr=4e-5,
    weight_decay=0.05,
    warmup_ratio=0.03,
    max_grad_norm=1.0,
    seed=42,
)
