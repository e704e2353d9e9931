# The food recipe with QLoRA: InternVL2-2B's LLM loaded in 4-bit NF4 (bitsandbytes, CUDA only); the vision
# tower, connector and lm_head stay bf16. A wider LoRA (r=64) makes up for the quantized base.
#   vlft train recipes/food/internvl2_2b_food_qlora.py --work-dir work/food_qlora
# GPU memory (an estimate, not a measurement): ~2 GB less than the LoRA recipe for weights; ~12 GB at micro
# batch 4, ~6 GB at micro batch 1 x accumulation 16 (logits and activations dominate).
_base_ = ["./internvl2_2b_food_lora.py"]

# ---------------------------------------------------------------- Settings
lora_r = 64

model = dict(
    llm=dict(train="lora", lora=dict(r=lora_r, alpha=2 * lora_r, dropout=0.05),
             quantization=dict(bits=4, quant_type="nf4", double_quant=True, compute_dtype="bfloat16")),
)
schedule = dict(lr=1e-4)   # QLoRA tolerates (and usually needs) a higher rate than LoRA on bf16
