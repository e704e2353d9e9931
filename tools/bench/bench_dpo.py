"""Peak memory and speed of a `vlft train` DPO step against an SFT step of the same pair length, same model.

Writes a random-init InternVL-layout model (text hidden 512, 8 layers, vocab 32000 by default: big enough that
the logits and activations, not the Python runtime, set the peak) and N preference pairs (one image each, a
long chosen and a long rejected answer). Then each side runs `vlft train` in its own child process, whose peak
RSS is read from the kernel (`os.wait4` ru_maxrss):

    sft        the chosen conversations as SFT data, micro batch 2 (the rows one DPO micro batch of 1 pair
               computes: chosen + rejected)
    dpo        the pairs, micro batch 1 pair, reference = the adapters off (one more no-grad forward)
    dpo-pre    the same, reference log-probs precomputed in one pass (schedule.precompute_reference)

    python tools/bench/bench_dpo.py                 # 32 pairs, 12 steps each (~3 min on 2 CPUs)
    python tools/bench/bench_dpo.py --tiny          # toy sizes: does the script still run?

The goal: a DPO step's peak RSS <= 1.3x the SFT step's. TRL's DPOTrainer is not run here (its VLM path needs
the model's processor, which for InternVL needs torchvision); see the README's table for what is compared.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from vlft.tiny.checkpoints import TinySizes, make_tiny_internvl_hf

MiB = 2**20


def _write_data(root: Path, pairs: int, words: int) -> tuple[Path, Path]:
    rows, sft = [], []
    for i in range(pairs):
        Image.effect_noise((112, 112), 40).convert("RGB").save(root / f"{i}.png")
        chosen = " ".join(f"good{j % 50}" for j in range(words))
        rejected = " ".join(f"bad{j % 50}" for j in range(words))
        question = [{"from": "human", "value": f"<image>\nDescribe picture {i}."}]
        rows.append({"conversations": question, "images": [f"{i}.png"], "chosen": {"from": "gpt", "value": chosen},
                     "rejected": {"from": "gpt", "value": rejected}})
        sft.append({"image": f"{i}.png", "conversations": question + [{"from": "gpt", "value": chosen}]})
    (root / "pairs.json").write_text(json.dumps(rows))
    (root / "sft.json").write_text(json.dumps(sft))
    return root / "pairs.json", root / "sft.json"


def _config(root: Path, name: str, base: Path, data: Path, steps: int, **schedule) -> Path:
    sections = {
        "model": {"family": "internvl", "path": str(base), "attn_implementation": "eager",
                  "connector": {"train": False}, "llm": {"train": "lora", "lora": {"r": 16, "alpha": 32}}},
        "data": {"datasets": [{"path": str(data)}], "max_length": 4096, "tiling": {"max_tiles": 2}},
        "schedule": {"max_steps": steps, "gradient_accumulation": 1, "lr": 1e-4, "warmup_ratio": 0.0, **schedule},
        "engine": {"deepspeed": None, "save_steps": 0, "logging_steps": 1, "report_to": []},
    }
    path = root / f"{name}.py"
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    return path


def _measure(config: Path, work: Path) -> tuple[float, float]:
    """(peak RSS MiB, pairs or samples per second of the logged steps after the first) of `vlft train CONFIG`
    in a child process; the peak is the kernel's high-water mark of that child (os.wait4)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    work.mkdir(parents=True, exist_ok=True)
    with (work.parent / f"{work.name}.out").open("w") as out:
        child = subprocess.Popen([sys.executable, "-m", "vlft.cli", "train", str(config), "--work-dir", str(work)],
                                 env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{config.name} failed:\n{(work.parent / f'{work.name}.out').read_text()[-3000:]}")
    rows = [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r][1:]
    return usage.ru_maxrss / 1024, sum(rates) / max(1, len(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--words", type=int, default=300, help="words per answer")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (smoke test, no figures)")
    args = parser.parse_args()
    if args.tiny:
        args.pairs, args.steps, args.words = 4, 2, 10
    sizes = TinySizes() if args.tiny else TinySizes(text_hidden=512, text_layers=8, text_heads=8, text_kv_heads=4,
                                                    vocab_size=32000)
    with tempfile.TemporaryDirectory(prefix="vlft-bench-dpo-") as tmp:
        root = Path(tmp)
        base = make_tiny_internvl_hf(root / "base", sizes=sizes)
        pairs, sft = _write_data(root, args.pairs, args.words)
        sides = {
            "sft (2 rows per micro batch)": _config(root, "sft", base, sft, args.steps, micro_batch_size=2),
            "dpo, reference = adapters off": _config(root, "dpo", base, pairs, args.steps, micro_batch_size=1,
                                                     objective="dpo"),
            "dpo, reference precomputed": _config(root, "dpo_pre", base, pairs, args.steps, micro_batch_size=1,
                                                  objective="dpo", precompute_reference=True),
        }
        results = {}
        for name, config in sides.items():
            start = time.perf_counter()
            results[name] = (*_measure(config, root / config.stem), time.perf_counter() - start)
    print(f"bench_dpo: {'tiny shapes (smoke test, no figures)' if args.tiny else 'text hidden 512 x 8 layers'}, "
          f"{args.pairs} pairs of ~{args.words} words per answer, {args.steps} steps")
    sft_rss = next(iter(results.values()))[0]
    print(f"{'side':<32} {'peak RSS MiB':>13} {'x SFT':>7} {'pairs|samples/s':>16} {'wall s':>8}")
    for name, (rss, rate, wall) in results.items():
        print(f"{name:<32} {rss:>13,.0f} {rss / sft_rss:>7.2f} {rate:>16.2f} {wall:>8.1f}")


if __name__ == "__main__":
    main()
