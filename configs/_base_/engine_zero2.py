# Shared engine settings: DeepSpeed ZeRO-2, a checkpoint every 500 steps, keep the last two.
engine = dict(
    deepspeed="zero2",
    save_steps=500,
    save_total_limit=2,
    logging_steps=10,
)
