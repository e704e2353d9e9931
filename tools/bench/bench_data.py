"""Data at scale: today's in-process encoding vs the cached parallel pass, in one run.

    python tools/bench/bench_data.py --samples 20000          # ~minutes on 2 cores
    python tools/bench/bench_data.py --samples 2000 --images 50
    python tools/bench/bench_data.py --tiny                   # CI smoke test (< 15 s), no figures

Makes N synthetic LLaVA samples (answers of 2-120 words, one of `--images` distinct JPEGs of random sizes,
every 10th text-only) for a tiny InternVL checkpoint (max 12 tiles), then measures, each in a fresh child
process: time from start to the first training batch (dataset built, batch plan made, first micro-batch
collated) and peak RSS (the process and its encoding workers), for

    in-process (old)   build_dataset(cache=False): every sample encoded here into Python lists
    cache cold, 1 proc the cached pass, no cache present, num_proc=1
    cache cold, 2 procs  ... num_proc=2
    cache warm         the cache present: opened, nothing encoded

and with two processes (gloo, CPU) sharing one cache: rank 0 builds, rank 1 waits at the barrier; the table
says how many ranks encoded (must be 1). Timings are noisy on a shared machine: read the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = "noodle broth dumpling spicy crisp sweet sour bowl plate steam fried fresh herb sauce rice".split()


def make_data(root: Path, samples: int, images: int, seed: int = 0) -> Path:
    """N samples in one LLaVA JSON and `images` JPEGs; returns the config path."""
    from PIL import Image

    from vlft.tiny.checkpoints import make_tiny_internvl_hf

    rng = random.Random(seed)
    (root / "img").mkdir(parents=True)
    for k in range(images):
        size = (rng.randint(40, 400), rng.randint(40, 400))
        Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256))).save(
            root / "img" / f"{k}.jpg", quality=80)
    rows = []
    for i in range(samples):
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 120)))
        if i % 10 == 9:
            rows.append({"id": str(i), "conversations": [{"from": "human", "value": "Say something."},
                                                         {"from": "gpt", "value": answer}]})
        else:
            rows.append({"id": str(i), "image": f"img/{rng.randrange(images)}.jpg",
                         "conversations": [{"from": "human", "value": "<image>\nWhat dish is this?"},
                                           {"from": "gpt", "value": answer}]})
    (root / "train.json").write_text(json.dumps(rows))
    model = make_tiny_internvl_hf(root / "model")
    config = root / "bench.py"
    config.write_text(f"model = dict(family='internvl', path={str(model)!r})\n"
                      f"data = dict(datasets=[dict(path={str(root / 'train.json')!r})], template='internvl2_5', "
                      "tiling=dict(mode='dynamic', max_tiles=12), max_length=4096)\n"
                      "schedule = dict(micro_batch_size=4, seed=0)\n")
    return config


def child(args) -> None:
    """One measurement, in this fresh process: prints one JSON line."""
    print(json.dumps(measure(args.config, args.cache_dir, args.mode, args.procs, world=args.world)))


def measure(config, cache_dir, mode: str, procs: int, *, world: int = 1) -> dict:
    start = time.perf_counter()
    from vlft.config import load_config
    from vlft.data.collate import pad_collate
    from vlft.data.dataset import build_dataset
    from vlft.data.sampler import plan_batches
    from vlft.model.facts import model_facts

    spec = load_config(str(config))
    info, tokenizer = model_facts(spec.model)
    wait, rank = None, 0
    if world > 1:
        import torch.distributed as dist

        from vlft.engine.distributed import barrier

        rank = int(os.environ["RANK"])
        dist.init_process_group("gloo", rank=rank, world_size=world)
        wait = barrier
    imported = time.perf_counter()
    dataset = build_dataset(spec, tokenizer, info, cache=mode != "old", cache_dir=cache_dir, num_proc=procs,
                            builder=rank == 0, wait=wait)
    built = time.perf_counter()
    plan = plan_batches(dataset.lengths, dataset.has_image, batch_size=spec.schedule.micro_batch_size,
                        seed=spec.schedule.seed, epoch=0, max_length=spec.data.packed_row_length)
    pad_collate([dataset[i] for i in plan[0]], tokenizer.pad_token_id or 0)
    first = time.perf_counter()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    encoded = getattr(getattr(dataset, "rows", None), "built_in", 0) is not None
    return {"rank": rank, "samples": len(dataset), "first_batch_s": first - start, "dataset_s": built - imported,
            "rss_mib": own, "worker_rss_mib": workers, "encoded": encoded}


def run_child(config: Path, cache_dir: Path, mode: str, procs: int, *, world: int = 1) -> list[dict]:
    command = [sys.executable, __file__, "--child", mode, "--config", str(config), "--cache-dir", str(cache_dir),
               "--procs", str(procs), "--world", str(world)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    children = [subprocess.Popen(command, env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for r in range(world)]
    results = []
    for process in children:
        out, err = process.communicate(timeout=3600)
        if process.returncode:
            raise SystemExit(f"bench child failed ({mode}):\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--tiny", action="store_true", help="CI smoke test: 200 samples, 5 images, no figures")
    parser.add_argument("--keep", help="keep the generated data and caches in this folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--procs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        return child(args)
    if args.tiny:
        args.samples, args.images = 200, 5
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vlft-bench-data-"))
    try:
        started = time.perf_counter()
        config = make_data(root / "data", args.samples, args.images)
        caches = root / "caches"
        rows = []
        for name, mode, procs in (("in-process (old)", "old", 1), ("cache cold, 1 proc", "cold", 1),
                                  ("cache cold, 2 procs", "cold", 2), ("cache warm", "warm", 2)):
            if mode == "cold":
                shutil.rmtree(caches, ignore_errors=True)
            # --tiny measures in this process (imports once: a smoke test, the figures mean nothing)
            (result,) = [measure(config, caches, mode, procs)] if args.tiny else run_child(config, caches, mode, procs)
            rows.append((name, result))
        shutil.rmtree(caches, ignore_errors=True)
        ranks = (run_child(config, caches, "cold", 1, world=2) if not args.tiny else
                 [measure(config, caches, "cold", 1), {**measure(config, caches, "warm", 1), "rank": 1}])
        print(f"bench_data: {args.samples:,} samples, {args.images} images"
              + (" (tiny: smoke test, no figures)" if args.tiny else ""))
        print(f"{'path':<22} {'first batch s':>14} {'of it dataset s':>16} {'peak RSS MiB':>13} {'workers MiB':>12}")
        for name, r in rows:
            print(f"{name:<22} {r['first_batch_s']:>14.2f} {r['dataset_s']:>16.2f} {r['rss_mib']:>13.0f} "
                  f"{r['worker_rss_mib']:>12.0f}")
        old, cold1, cold2, warm = (r for _, r in rows)
        print(f"ratios: cold 2 procs vs 1 proc (encode rate) {cold1['dataset_s'] / cold2['dataset_s']:.2f}x; "
              f"warm vs old (time to first batch) {old['first_batch_s'] / warm['first_batch_s']:.1f}x faster; "
              f"peak RSS warm/old {warm['rss_mib'] / old['rss_mib']:.2f}")
        encoders = sum(r["encoded"] for r in ranks)
        print(f"2 processes ({'gloo' if not args.tiny else 'tiny: one after the other'}): {encoders} of 2 ranks encoded "
              f"({'built once' if encoders == 1 else 'WRONG: must be 1'}); "
              f"first batch {max(r['first_batch_s'] for r in ranks):.2f} s; "
              f"rank 1 peak RSS {ranks[1]['rss_mib']:.0f} MiB")
        print(f"total {time.perf_counter() - started:.0f} s")
        if encoders != 1:
            raise SystemExit(1)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
