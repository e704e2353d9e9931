"""bench_dpo's TRL side, run in its own process: TRL's `DPOTrainer` + peft on a LLaVA -hf folder and vlft's pair
file, the same LoRA and schedule as the vlft side; writes the step times to OUT (JSON).

    python tools/bench/dpo_trl_side.py BASE PAIRS.json OUT.json --steps N --lora-r 16 --lora-alpha 32 --lr 1e-4
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

LLM_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def _dataset(pairs_file: Path):
    """vlft's pair rows (LLaMA-Factory's keys, one image each) as TRL's conversational vision preference rows."""
    from datasets import Dataset
    from PIL import Image

    rows = []
    for row in json.loads(pairs_file.read_text()):
        question = row["conversations"][0]["value"].replace("<image>\n", "")
        rows.append({
            "images": [Image.open(pairs_file.parent / name).convert("RGB") for name in row["images"]],
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": row["chosen"]["value"]}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": row["rejected"]["value"]}]}],
        })
    return Dataset.from_list(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("pairs", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--lora-r", type=int, required=True)
    parser.add_argument("--lora-alpha", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    args = parser.parse_args()

    import torch
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    step_ends: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *_args, **_kwargs):
            step_ends.append(time.perf_counter())

    processor = AutoProcessor.from_pretrained(str(args.base))
    model = AutoModelForImageTextToText.from_pretrained(str(args.base), dtype=torch.float32,
                                                        attn_implementation="eager")
    config = DPOConfig(output_dir=str(args.out.parent / "trl-run"), max_steps=args.steps,
                       per_device_train_batch_size=1, gradient_accumulation_steps=1, learning_rate=args.lr,
                       lr_scheduler_type="constant", warmup_steps=0, beta=0.1, loss_type=["sigmoid"],
                       gradient_checkpointing=False,   # vlft's default; TRL's own default is on
                       bf16=False, fp16=False,         # fp32 as vlft here; TRL's default bf16 autocast is slow on CPU
                       max_length=None, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                       dataloader_num_workers=0, seed=0)
    trainer = DPOTrainer(model=model, args=config, train_dataset=_dataset(args.pairs), processing_class=processor,
                         peft_config=LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.05,
                                                target_modules=LLM_LINEAR),
                         callbacks=[StepTimes()])
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    rate = (len(step_ends) - 1) / (step_ends[-1] - step_ends[0]) if len(step_ends) > 1 else float("nan")
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    args.out.write_text(json.dumps({"pairs_per_s": rate, "trainable": trainable, "losses": losses}))


if __name__ == "__main__":
    main()
