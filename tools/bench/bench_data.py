"""Data at scale: today's in-process encoding vs the cached parallel pass, in one run.

    python tools/bench/bench_data.py --samples 20000          # ~minutes on 2 cores
    python tools/bench/bench_data.py --samples 2000 --images 50
    python tools/bench/bench_data.py --tiny                   # CI smoke test (< 15 s), no figures
    python tools/bench/bench_data.py --samples 200000 --own-image-paths --warm-only   # the image re-check at scale

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

Every warm start stats each row's images (the cache follows replaced images); "re-stat s" is that check alone,
timed again after the start. `--own-image-paths` gives every image sample its own file (a hard link to one of
the `--images` JPEGs), so the check stats one path per sample as on a real set. `--warm-only` builds the cache
once (2 procs, not measured) and measures the warm start, then the start after one image was replaced (its
rows encoded again, the rest kept). `--restat-only` times the re-check alone on N rows of one image each (the
rows' stat columns filled from the files, N hard links): how the one part of a warm start that grows with N
grows, at sizes whose cold build would take too long here (1M).
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


def make_data(root: Path, samples: int, images: int, seed: int = 0, own_paths: bool = False) -> Path:
    """N samples in one LLaVA JSON and `images` JPEGs (each sample its own hard link to one of them when
    `own_paths`); returns the config path."""
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
            image = f"img/{rng.randrange(images)}.jpg"
            if own_paths:
                os.link(root / image, root / f"img/s{i}.jpg")
                image = f"img/s{i}.jpg"
            rows.append({"id": str(i), "image": image,
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
    from vlft.data.rows import rows_with_changed_images
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
    rows = getattr(dataset, "rows", None)
    encoded = getattr(rows, "built_in", 0) is not None
    restat = time.perf_counter()
    if rows is not None:
        rows_with_changed_images(rows.table)
    restat = time.perf_counter() - restat if rows is not None else 0.0
    return {"rank": rank, "samples": len(dataset), "first_batch_s": first - start, "dataset_s": built - imported,
            "rss_mib": own, "worker_rss_mib": workers, "encoded": encoded, "restat_s": restat,
            "reencoded": getattr(rows, "reencoded", None) or 0}


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


def warm_only(args, config: Path, caches: Path, started: float) -> None:
    """The warm start with its image re-check, and the start after one image was replaced."""
    from PIL import Image

    run_child(config, caches, "cold", 2)
    warm = run_child(config, caches, "warm", 2)[0]
    replaced = config.parent / "img" / ("s0.jpg" if args.own_image_paths else "0.jpg")
    replaced.unlink()  # a new file, not written through the hard link (that would change every link of it)
    Image.new("RGB", (900, 300), (1, 2, 3)).save(replaced, quality=80)  # other size: other tiles
    after = run_child(config, caches, "warm", 2)[0]
    paths = "one path per sample" if args.own_image_paths else f"{args.images} paths"
    print(f"bench_data --warm-only: {args.samples:,} samples, {args.images} images ({paths})")
    print(f"{'path':<30} {'first batch s':>14} {'of it dataset s':>16} {'re-stat s':>10} {'rows encoded':>13} "
          f"{'peak RSS MiB':>13}")
    for name, r in (("cache warm (re-checked)", warm), ("warm, 1 image replaced", after)):
        print(f"{name:<30} {r['first_batch_s']:>14.2f} {r['dataset_s']:>16.2f} {r['restat_s']:>10.2f} "
              f"{r['reencoded']:>13} {r['rss_mib']:>13.0f}")
    print(f"total {time.perf_counter() - started:.0f} s")


def restat_only(root: Path, samples: int) -> None:
    """rows_with_changed_images on `samples` rows, each its own path (hard links: ext4 allows 65,000 per file)."""
    import pyarrow as pa

    from vlft.data.rows import rows_with_changed_images

    (root / "img").mkdir(parents=True)
    bases = [root / "img" / f"base{k}.jpg" for k in range(samples // 50_000 + 1)]
    for k, base in enumerate(bases):
        base.write_bytes(b"\xff\xd8" + bytes(1000 + k))
    paths = [str(root / "img" / f"s{i}.jpg") for i in range(samples)]
    for i, path in enumerate(paths):
        os.link(bases[i % len(bases)], path)
    stats = [os.stat(p) for p in paths]
    table = pa.table({"images": [[p] for p in paths], "image_bytes": [[st.st_size] for st in stats],
                      "image_mtimes": [[st.st_mtime_ns] for st in stats]})
    del stats
    times = []
    for _ in range(3):
        start = time.perf_counter()
        changed = rows_with_changed_images(table)
        times.append(time.perf_counter() - start)
    assert not len(changed)
    os.unlink(paths[samples // 2])
    bases[0].parent.joinpath("new.jpg").write_bytes(b"\xff\xd8" + bytes(5))
    os.rename(bases[0].parent / "new.jpg", paths[samples // 2])  # replaced: another size
    assert rows_with_changed_images(table).tolist() == [samples // 2]
    print(f"bench_data --restat-only: {samples:,} rows, one image path each: re-check "
          f"{min(times):.2f} s best of 3 ({', '.join(f'{t:.2f}' for t in times)}), "
          f"{min(times) / samples * 1e6:.1f} us per image; the replaced image's row found")


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
    parser.add_argument("--own-image-paths", action="store_true",
                        help="every image sample its own file (hard links): the re-check stats one path per sample")
    parser.add_argument("--warm-only", action="store_true",
                        help="build once, then measure the warm start and the start after one image was replaced")
    parser.add_argument("--restat-only", action="store_true",
                        help="time the image re-check alone on --samples rows (no model, no encoding)")
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
    if args.restat_only:
        try:
            return restat_only(root, args.samples)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    try:
        started = time.perf_counter()
        config = make_data(root / "data", args.samples, args.images, own_paths=args.own_image_paths)
        caches = root / "caches"
        if args.warm_only:
            return warm_only(args, config, caches, started)
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
