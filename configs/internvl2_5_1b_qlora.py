# InternVL2.5-1B with QLoRA: the LLM loaded in 4-bit NF4 (vision tower, connector and lm_head stay unquantized).
_base_ = ["./internvl2_5_1b_lora.py"]

# ---------------------------------------------------------------- Settings
lora_r = 64

model = dict(
    llm=dict(train="lora", lora=dict(r=lora_r, alpha=2 * lora_r),
             quantization=dict(bits=4, quant_type="nf4", double_quant=True, compute_dtype="bfloat16")),
)
