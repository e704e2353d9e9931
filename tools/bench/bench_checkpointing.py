"""Activation memory of one training step by checkpointing kind: none, torch's non-reentrant, reentrant.

bench_train's Llama (512 wide, 4 layers, MLP 1024, vocab 512), LoRA r 16 on q/k/v/o/gate/up/down, fp32, sdpa,
one micro batch of 4 x 1010 tokens (three rows padded from 90% on, or none with `--no-padding`). Each kind
runs in a fresh child process and reports what the forward and backward added to its peak RSS, and a checksum
of the loss and LoRA gradients, which must be equal for all three.

    python tools/bench/bench_checkpointing.py
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

KINDS = ("none", "non-reentrant", "reentrant")


def child(kind: str, padding: bool, tokens: int) -> None:
    import resource

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=4, vocab_size=512, max_position_embeddings=4096)
    config._attn_implementation = "sdpa"
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=16, lora_alpha=32, target_modules=targets))
    if kind != "none":
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": kind == "reentrant"})
    model.train()
    ids = torch.randint(0, 512, (4, tokens))
    mask = torch.ones_like(ids)
    if padding:
        mask[1:, tokens * 9 // 10:] = 0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loss = model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False).loss
    loss.backward()
    added = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    checksum = sum(float(p.grad.double().abs().sum()) for p in model.parameters() if p.grad is not None)
    print(json.dumps({"kind": kind, "added_mb": added, "loss": float(loss.detach()), "grad_checksum": checksum}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-padding", action="store_true", help="four full rows, no attention-mask padding")
    parser.add_argument("--tokens", type=int, default=1010, help="row length (default 1010; the smoke test: 64)")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, padding=not args.no_padding, tokens=args.tokens)
        return
    rows = []
    for kind in KINDS:
        cmd = [sys.executable, "-W", "ignore", __file__, "--child", kind, "--tokens", str(args.tokens)]
        cmd += ["--no-padding"] if args.no_padding else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    reentrant = next(r for r in rows if r["kind"] == "reentrant")["added_mb"]
    print("| checkpointing | step added to peak RSS MB | ÷ reentrant | loss | gradient checksum |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['kind']} | {r['added_mb']:.0f} | {r['added_mb'] / reentrant:.2f}× | {r['loss']:.6f} | "
              f"{r['grad_checksum']:.10g} |")
    if len({(round(r["loss"], 6), round(r["grad_checksum"], 6)) for r in rows}) != 1:
        raise SystemExit("bench_checkpointing: the kinds disagree on the loss or the gradients")


if __name__ == "__main__":
    main()
