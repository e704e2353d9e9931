"""Peak memory and speed of a `vlft train` DPO step against an SFT step of the same pair length, same model.

Writes a random-init InternVL-layout model (text hidden 512, 8 layers, vocab 32000 by default: big enough that
the logits and activations, not the Python runtime, set the peak) and N preference pairs (one image each, a
long chosen and a long rejected answer). Then each side runs `vlft train` in its own child process, whose peak
RSS is read from the kernel (`os.wait4` ru_maxrss):

    sft        the chosen conversations as SFT data, micro batch 2 (the rows one DPO micro batch of 1 pair
               computes: chosen + rejected)
    dpo        the pairs, micro batch 1 pair, reference = the adapters off (one more no-grad forward)
    dpo-pre    the same, reference log-probs precomputed in one pass (schedule.precompute_reference)

    trl        (--model llava) TRL's DPOTrainer + peft on the same folder and pairs (tools/bench/dpo_trl_side.py):
               the same LoRA, micro batch, lr and steps, its reference the adapters off too, gradient
               checkpointing off as vlft's

    python tools/bench/bench_dpo.py                 # InternVL layout, 32 pairs, 12 steps each (~3 min on 2 CPUs)
    python tools/bench/bench_dpo.py --model llava   # LLaVA-1.5 layout, with TRL's side
    python tools/bench/bench_dpo.py --tiny          # toy sizes: does the script still run?

The goals: a DPO step's peak RSS <= 1.3x the SFT step's, and the ratios against TRL. TRL runs on LLaVA only: its
VLM path builds inputs with the model's processor, and InternVL's loads a video processor that needs torchvision
(not installable beside the CPU torch here).
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

from vlft.tiny.checkpoints import TinySizes, make_tiny_internvl_hf, make_tiny_llava_hf

LORA_R, LORA_ALPHA, LR = 16, 32, 1e-4

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


#: --model -> (model settings, data settings) of the vlft sides
MODELS = {
    "internvl": ({"family": "internvl", "connector": {"train": False}}, {"tiling": {"max_tiles": 2}}),
    "llava": ({"family": "llava", "connector": {"train": False, "downsample_ratio": 1.0}},
              {"tiling": {"mode": "pad_square"}, "template": "vicuna_v1"}),
}


def _config(root: Path, name: str, model: str, base: Path, data: Path, steps: int, **schedule) -> Path:
    model_settings, data_settings = MODELS[model]
    sections = {
        "model": {**model_settings, "path": str(base), "attn_implementation": "eager",
                  "llm": {"train": "lora", "lora": {"r": LORA_R, "alpha": LORA_ALPHA}}},
        "data": {"datasets": [{"path": str(data)}], "max_length": 4096, **data_settings},
        "schedule": {"max_steps": steps, "gradient_accumulation": 1, "lr": LR, "warmup_ratio": 0.0, **schedule},
        "engine": {"deepspeed": None, "save_steps": 0, "logging_steps": 1, "report_to": []},
    }
    path = root / f"{name}.py"
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    return path


def _child(command: list[str], log: Path) -> float:
    """Peak RSS MiB of `command` run as a child process: the kernel's high-water mark of that child (os.wait4)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(command[:4])} failed:\n{log.read_text()[-3000:]}")
    return usage.ru_maxrss / 1024


def _measure(config: Path, work: Path) -> tuple[float, float]:
    """(peak RSS MiB, pairs or samples per second of the logged steps after the first) of `vlft train CONFIG`."""
    work.mkdir(parents=True, exist_ok=True)
    rss = _child([sys.executable, "-m", "vlft.cli", "train", str(config), "--work-dir", str(work)],
                 work.parent / f"{work.name}.out")
    rows = [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r][1:]
    return rss, sum(rates) / max(1, len(rates))


def _measure_trl(base: Path, pairs: Path, steps: int, root: Path) -> tuple[float, float]:
    """(peak RSS MiB, pairs per second after the first step) of TRL's DPOTrainer on the same folder and pairs."""
    stats = root / "trl.json"
    rss = _child([sys.executable, str(Path(__file__).with_name("dpo_trl_side.py")), str(base), str(pairs),
                  str(stats), "--steps", str(steps), "--lora-r", str(LORA_R), "--lora-alpha", str(LORA_ALPHA),
                  "--lr", str(LR)], root / "trl.out")
    return rss, json.loads(stats.read_text())["pairs_per_s"]


def _llava_base(root: Path, sizes: TinySizes) -> Path:
    """A LLaVA-1.5 -hf folder with what TRL's processor path reads besides the weights (processor files, the
    chat template), written by vlft's own export writers."""
    from transformers import AutoConfig, AutoTokenizer

    from vlft.data.templates import get_template
    from vlft.data.tiling import TilingSpec
    from vlft.export.hf_files import write_processor_files, write_tokenizer
    from vlft.families import normalisation_of
    from vlft.model.load import official_info

    base = make_tiny_llava_hf(root / "base", sizes=sizes)
    info = official_info(AutoConfig.from_pretrained(base))
    mean, std = normalisation_of(info)
    write_processor_files(base, info, TilingSpec(mode="pad_square", tile_size=info.tile_size, min_tiles=1,
                                                 max_tiles=1, mean=mean, std=std))
    write_tokenizer(base, AutoTokenizer.from_pretrained(base), family=info.family, template=get_template("vicuna_v1"))
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--words", type=int, default=300, help="words per answer")
    parser.add_argument("--model", choices=sorted(MODELS), default="internvl")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (smoke test, no figures)")
    args = parser.parse_args()
    if args.tiny:
        args.pairs, args.steps, args.words = 4, 2, 10
    sizes = TinySizes() if args.tiny else TinySizes(text_hidden=512, text_layers=8, text_heads=8, text_kv_heads=4,
                                                    vocab_size=32000)
    with tempfile.TemporaryDirectory(prefix="vlft-bench-dpo-") as tmp:
        root = Path(tmp)
        base = (_llava_base(root, sizes) if args.model == "llava" else
                make_tiny_internvl_hf(root / "base", sizes=sizes))
        pairs, sft = _write_data(root, args.pairs, args.words)
        sides = {
            "sft (2 rows per micro batch)": _config(root, "sft", args.model, base, sft, args.steps,
                                                    micro_batch_size=2),
            "dpo, reference = adapters off": _config(root, "dpo", args.model, base, pairs, args.steps,
                                                     micro_batch_size=1, objective="dpo"),
            "dpo, reference precomputed": _config(root, "dpo_pre", args.model, base, pairs, args.steps,
                                                  micro_batch_size=1, objective="dpo", precompute_reference=True),
        }
        results = {}
        for name, config in sides.items():
            start = time.perf_counter()
            results[name] = (*_measure(config, root / config.stem), time.perf_counter() - start)
        if args.model == "llava":
            start = time.perf_counter()
            results["trl DPOTrainer + peft"] = (*_measure_trl(base, pairs, args.steps, root),
                                                time.perf_counter() - start)
    print(f"bench_dpo: {args.model}, "
          f"{'tiny shapes (smoke test, no figures)' if args.tiny else 'text hidden 512 x 8 layers'}, "
          f"{args.pairs} pairs of ~{args.words} words per answer, {args.steps} steps")
    sft_rss = next(iter(results.values()))[0]
    trl = results.get("trl DPOTrainer + peft")
    print(f"{'side':<32} {'peak RSS MiB':>13} {'x SFT':>7} {'x TRL':>7} {'pairs|samples/s':>16} "
          f"{'x TRL':>7} {'wall s':>8}")
    for name, (rss, rate, wall) in results.items():
        rss_vs_trl = f"{rss / trl[0]:.2f}" if trl else "-"
        rate_vs_trl = f"{rate / trl[1]:.2f}" if trl else "-"
        print(f"{name:<32} {rss:>13,.0f} {rss / sft_rss:>7.2f} {rss_vs_trl:>7} {rate:>16.2f} {rate_vs_trl:>7} "
              f"{wall:>8.1f}")


if __name__ == "__main__":
    main()
