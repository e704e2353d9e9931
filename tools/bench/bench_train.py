"""Training throughput: vlft (packing on / off) against a plain transformers `Trainer` + peft loop.

One tiny InternVL model (transformers-native layout, written locally) and one dataset of mixed lengths
(short VQA answers and long descriptions, images of several aspect ratios -> 1 to 7 tiles, LLaVA JSON)
are trained for one epoch by each contender, each in its own child process (so peak RSS is its own):

- vlft, `train_from_config` with `--deepspeed none` (plain torch), packing off and on; ZeRO-2 with `--zero2`;
- the plain loop a user would write instead: `InternVLForConditionalGeneration.from_pretrained` + peft
  LoRA on the same layers (the LLM's q/k/v/o/gate/up/down, connector trained), the same token ids and
  labels (vlft's encoder), pixels from transformers' `GotOcr2ImageProcessorPil`, a padding collator, and
  `transformers.Trainer` with its defaults (random order, no length grouping).

Same LoRA (r 16, alpha 32, dropout 0.05), learning rate, fp32, sdpa attention, same micro-batch count
per optimizer step (micro 4 x accumulation 2; packed runs take `--pack-rows` rows of at most
`--pack-length` tokens per micro-batch). Each contender is timed over the whole epoch, from its first
forward call to its last optimizer step (data loading included; start-up and the final save excluded),
in CPU seconds of its process (one torch thread, data loaded in-process: steady on a shared machine)
and in wall seconds.

    python tools/bench/bench_train.py            # ~3 minutes on 2 CPU cores
    python tools/bench/bench_train.py --zero2    # + vlft under DeepSpeed ZeRO-2 (one process), ~5 minutes
    python tools/bench/bench_train.py --repeats 2   # each contender twice (order reversed), best of each

Columns: samples and real tokens (padding excluded) per CPU second; samples per wall second; efficiency =
real tokens / tokens the model computed (rows x row length); peak RSS of the child process; ratios of
samples per CPU second against the plain loop.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
WORDS = ("the a dish food photo image picture shows this that red green blue yellow purple orange white black "
         "round square triangle star striped dotted plain dumplings noodles sushi pizza salad soup curry taco "
         "cake bread rice burger left right top bottom").split()
# (width, height) in tiles of the bench model: aspect ratios 1:1 .. 3:1 give grids of 1 to 6 tiles
# (+ thumbnail): 1, 3, 4, 7 tiles with max_tiles=6.
SHAPES = [(1, 1), (2, 1), (1, 2), (3, 1), (1, 3), (3, 2), (2, 3), (2, 2)]


def bench_sizes():
    from vlft.tiny.checkpoints import TinySizes

    # Bigger than the test model so compute, not Python overhead, dominates: 112 px tiles -> 16 tokens each.
    # A text model wide enough (512) that attention is not most of the compute, as in a real 2B model.
    return TinySizes(vision_hidden=128, vision_layers=2, vision_heads=4, tile_size=112, text_hidden=512,
                     text_layers=4, text_heads=8, text_kv_heads=4, vocab_size=512)


def make_data(root: Path, samples: int, *, tile_size: int, seed: int = 0,
              long_words: tuple[int, int] = (100, 300)) -> dict:
    """Noise JPEGs of several aspect ratios (1-7 tiles) and a LLaVA-format file: two thirds short VQA answers
    (1-6 words), one third long descriptions (`long_words` words). Returns the dataset paths."""
    import random

    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(samples):
        cols, rws = SHAPES[i % len(SHAPES)]
        # Not exact multiples of the tile, as photos are; the grid still follows the aspect ratio.
        w, h = cols * tile_size + rng.randint(-9, 9), rws * tile_size + rng.randint(-9, 9)
        pixels = np_rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(images / f"{i}.jpg", quality=90)
        if i % 3 == 2:
            question = "Describe the picture in detail."
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*long_words))) + "."
        else:
            question = f"What {rng.choice(['dish', 'colour', 'shape'])} is {rng.choice(['left', 'right', 'top'])}?"
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
        rows.append({"id": str(i), "image": f"images/{i}.jpg",
                     "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                                       {"from": "gpt", "value": answer}]})
    data = root / "train.json"
    data.write_text(json.dumps(rows))
    return {"data": str(data), "image_root": str(root)}


def make_workspace(root: Path, samples: int, seed: int) -> dict:
    """The bench model and dataset under `root`; returns their paths."""
    from vlft.tiny.checkpoints import make_tiny_internvl_hf

    sizes = bench_sizes()
    base = make_tiny_internvl_hf(root / "base", sizes=sizes, seed=seed)
    return {"base": str(base), **make_data(root, samples, tile_size=sizes.tile_size, seed=seed)}


def write_config(path: Path, ws: dict, args, *, packing: bool) -> Path:
    sections = {
        "model": {"family": "internvl", "path": ws["base"], "dtype": "float32", "attn_implementation": "sdpa",
                  "connector": {"train": True},
                  "llm": {"train": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05}}},
        "data": {"datasets": [{"path": ws["data"], "image_root": ws["image_root"]}], "template": "internvl2_5",
                 "max_length": args.max_length, "packing": packing, "pack_length": args.pack_length,
                 "tiling": {"mode": "dynamic", "min_tiles": 1, "max_tiles": args.max_tiles}},
        "schedule": {"epochs": 1, "micro_batch_size": args.pack_rows if packing else args.micro_batch,
                     "gradient_accumulation": args.accumulation, "lr": 2e-4, "warmup_ratio": 0.03, "seed": 0},
        "engine": {"save_steps": 10**6, "save_total_limit": 1, "logging_steps": 1},
    }
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    return path


# ------------------------------------------------------------------------------------------ children


class Meter:
    """Clock readings at every forward call and optimizer-step end, and rows x length computed per forward.

    The timed window runs from the first forward call to the last step end: the whole epoch, so every
    contender is timed on the same samples (start-up and the final save excluded). Both wall time and
    this process's CPU time are read: on a shared machine the CPU time (one torch thread, data loaded in
    the main process) is the steadier measure of the work done.
    """

    def __init__(self):
        self.step_ends: list[tuple[float, float]] = []   # (wall, cpu)
        self.forwards: list[tuple[float, float, int, int, int]] = []  # (wall, cpu, rows, computed, real)

    @staticmethod
    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def wrap_forward(self, cls, real_tokens):
        original = cls.forward
        meter = self

        def forward(model, *a, **kw):
            ids = kw.get("input_ids")
            meter.forwards.append((*meter.now(), ids.shape[0], ids.numel(), real_tokens(kw)))
            return original(model, *a, **kw)

        cls.forward = forward

    def step_end(self, *_, **__) -> None:
        self.step_ends.append(self.now())

    def summary(self, samples: int, real_tokens: int) -> dict:
        (wall0, cpu0), (wall1, cpu1) = self.forwards[0][:2], self.step_ends[-1]
        return {"seconds": wall1 - wall0, "cpu_seconds": cpu1 - cpu0, "steps": len(self.step_ends),
                "samples": samples, "real_tokens": real_tokens, "computed_tokens": sum(f[3] for f in self.forwards),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_vlft(ws: dict, args, *, packing: bool, deepspeed: str) -> dict:
    from vlft.engine import progress
    from vlft.engine.train import train_from_config
    from vlft.model.vlm import VisionLanguageModel

    meter = Meter()
    meter.wrap_forward(VisionLanguageModel, lambda kw: 0)  # real tokens come from the engine's own count
    per_step: list[tuple[int, int]] = []
    original_step = progress.TrainLog.step

    def record(log, step, **kw):
        per_step.append((kw["samples"], kw["tokens"]))
        return original_step(log, step, **kw)

    progress.TrainLog.step = record
    work = Path(tempfile.mkdtemp(prefix=f"vlft-{'pack' if packing else 'pad'}-{deepspeed}-", dir=args.work))
    config = write_config(work.with_suffix(".py"), ws, args, packing=packing)
    train_from_config(config, work_dir=str(work), deepspeed=deepspeed, on_step=meter.step_end)
    return meter.summary(sum(s for s, _ in per_step), sum(t for _, t in per_step))


def child_plain(ws: dict, args) -> dict:
    """What a user writes without vlft: official model class, peft, a padding collator, Trainer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoTokenizer, GotOcr2ImageProcessorPil, InternVLForConditionalGeneration, Trainer,
                              TrainerCallback, TrainingArguments)

    from vlft.config import load_config
    from vlft.data.dataset import build_dataset
    from vlft.data.tiling import IMAGENET_MEAN, IMAGENET_STD, load_image
    from vlft.model.vlm import VLMInfo

    model = InternVLForConditionalGeneration.from_pretrained(ws["base"], dtype=torch.float32,
                                                             attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(ws["base"])
    targets = "q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                             target_modules=rf".*language_model.*\.({targets})"))
    for param in model.base_model.model.model.multi_modal_projector.parameters():
        param.requires_grad_(True)

    # The same token ids and labels as vlft (so both train on identical sequences); pixels from transformers.
    spec = load_config(str(write_config(Path(args.work) / "plain.py", ws, args, packing=False)))
    vision = model.config.vision_config
    info = VLMInfo(family="internvl", image_token_id=model.config.image_token_id, select_layer=-1,
                   downsample_ratio=0.5, tile_size=vision.image_size[0] if isinstance(vision.image_size, list)
                   else vision.image_size, patch_size=14)
    encoded = build_dataset(spec, tokenizer, info)
    processor = GotOcr2ImageProcessorPil(crop_to_patches=True, min_patches=1, max_patches=args.max_tiles,
                                         size={"height": info.tile_size, "width": info.tile_size},
                                         image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)

    class Samples(torch.utils.data.Dataset):
        def __len__(self):
            return len(encoded)

        def __getitem__(self, i):
            e, sample = encoded.encoded[i], encoded.samples[i]
            pixels = processor([load_image(p) for p in sample.images], return_tensors="pt")["pixel_values"]
            return {"input_ids": e.input_ids, "labels": e.labels, "pixel_values": pixels}

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate(features):
        longest = max(len(f["input_ids"]) for f in features)
        ids = torch.tensor([f["input_ids"] + [pad_id] * (longest - len(f["input_ids"])) for f in features])
        labels = torch.tensor([f["labels"] + [-100] * (longest - len(f["labels"])) for f in features])
        mask = torch.tensor([[1] * len(f["input_ids"]) + [0] * (longest - len(f["input_ids"])) for f in features])
        return {"input_ids": ids, "labels": labels, "attention_mask": mask,
                "pixel_values": torch.cat([f["pixel_values"] for f in features])}

    meter = Meter()
    meter.wrap_forward(InternVLForConditionalGeneration, lambda kw: int(kw["attention_mask"].sum()))

    class StepEnd(TrainerCallback):
        def on_step_end(self, *a, **k):
            meter.step_end()

    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="plain-", dir=args.work), per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.accumulation, num_train_epochs=1, learning_rate=2e-4, warmup_steps=0.03,
        lr_scheduler_type="cosine", max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none",
        remove_unused_columns=False, dataloader_num_workers=0, use_cpu=True, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=training_args, train_dataset=Samples(), data_collator=collate,
                      callbacks=[StepEnd()])
    trainer.train()
    return meter.summary(sum(f[2] for f in meter.forwards), sum(f[4] for f in meter.forwards))


def run_child(variant: str, ws: dict, args) -> dict:
    out = Path(args.work) / f"{variant}.json"
    cmd = [sys.executable, str(HERE), "--child", variant, "--work", args.work, "--ws", json.dumps(ws),
           "--out", str(out), "--threads", str(args.threads), "--max-length", str(args.max_length),
           "--max-tiles", str(args.max_tiles), "--micro-batch", str(args.micro_batch),
           "--pack-rows", str(args.pack_rows), "--accumulation", str(args.accumulation)]
    if args.pack_length:
        cmd += ["--pack-length", str(args.pack_length)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"{variant} failed (exit {proc.returncode})")
    result = json.loads(out.read_text())
    result["wall"] = time.perf_counter() - start
    return result


VARIANTS = {
    "plain": "transformers Trainer + peft, padding",
    "vlft-pad": "vlft, padding (--deepspeed none)",
    "vlft-pack": "vlft, packing (--deepspeed none)",
    "vlft-pad-zero2": "vlft, padding (ZeRO-2)",
    "vlft-pack-zero2": "vlft, packing (ZeRO-2)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=96, help="dataset size (default 96)")
    parser.add_argument("--zero2", action="store_true", help="also run vlft under DeepSpeed ZeRO-2")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the contenders this many times, order reversed each time; best of each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--max-tiles", type=int, default=6)
    parser.add_argument("--micro-batch", type=int, default=4, help="samples per micro-batch (padding)")
    parser.add_argument("--pack-rows", type=int, default=4, help="packed rows per micro-batch (packing)")
    parser.add_argument("--pack-length", type=int, default=512,
                        help="tokens per packed row (default: --max-length); see data.pack_length")
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--ws", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        ws = json.loads(args.ws)
        if args.child == "plain":
            result = child_plain(ws, args)
        else:
            result = child_vlft(ws, args, packing="pack" in args.child,
                                deepspeed="zero2" if args.child.endswith("zero2") else "none")
        Path(args.out).write_text(json.dumps(result))
        return

    variants = ["plain", "vlft-pad", "vlft-pack"] + (["vlft-pad-zero2", "vlft-pack-zero2"] if args.zero2 else [])
    with tempfile.TemporaryDirectory() as tmp:
        args.work = tmp
        ws = make_workspace(Path(tmp), args.samples, seed=0)
        best: dict[str, dict] = {}
        for repeat in range(args.repeats):
            for variant in (variants if repeat % 2 == 0 else variants[::-1]):
                result = run_child(variant, ws, args)
                rate = result["samples"] / result["cpu_seconds"]
                if variant not in best or rate > best[variant]["samples"] / best[variant]["cpu_seconds"]:
                    best[variant] = result
                print(f"# {variant}: {rate:.2f} samples/CPU-s, {result['samples'] / result['seconds']:.2f} "
                      f"samples/s ({result['steps']} steps, child ran {result['wall']:.0f}s)", flush=True)

    base = best["plain"]
    base_rate = base["samples"] / base["cpu_seconds"]
    print(f"\n{args.samples} samples, 1 epoch, micro {args.micro_batch} samples (packing: {args.pack_rows} rows of "
          f"<= {args.pack_length or args.max_length} tokens) x accumulation {args.accumulation}, torch threads {args.threads}, "
          f"best of {args.repeats}")
    header = (f"{'contender':<38} {'samples/cpu-s':>13} {'tokens/cpu-s':>12} {'samples/s':>9} {'efficiency':>10} "
              f"{'peak RSS':>9} {'vs plain':>8}")
    print(header)
    print("-" * len(header))
    for variant in variants:
        r = best[variant]
        rate = r["samples"] / r["cpu_seconds"]
        print(f"{VARIANTS[variant]:<38} {rate:>13.2f} {r['real_tokens'] / r['cpu_seconds']:>12.0f} "
              f"{r['samples'] / r['seconds']:>9.2f} {r['real_tokens'] / max(1, r['computed_tokens']):>10.1%} "
              f"{r['peak_rss_mb']:>7.0f}MB {rate / base_rate:>7.2f}x")


if __name__ == "__main__":
    main()
