"""Peak memory of `vlft convert --to gguf` (vlft's streamed folder for the converter, then llama.cpp's own
convert_hf_to_gguf.py, LLM and --mmproj) on an InternVL2-2B-shaped LoRA checkpoint.

The base and checkpoint are bench_merge_memory.py's (random-init InternViT-300M + a 1.8B Llama-layout LLM,
bf16 in 2 GB shards, LoRA r=16, tiny local tokenizer). The conversion runs in its own child process; the
converter is its grandchild. Three figures:

    peak RSS      ru_maxrss of the child tree from the kernel (the largest single process: vlft or converter)
    sampled tree  psutil every 20 ms, vlft + converter together (what the machine holds at once)
    converter's own  the converter's peak with no model (`--print-supported-models`: torch, gguf, its modules)

Goal (issue 21): sampled tree <= 1.5 x the largest shard + the converter's own, i.e. no step holds two copies.

    LLAMA_CPP_DIR=... python tools/bench/bench_gguf.py            # ~10 min, ~20 GB of disk, all deleted after
    LLAMA_CPP_DIR=... python tools/bench/bench_gguf.py --tiny     # toy sizes: does the script still run?

The converter runs through tests/export/gguf_tiny_converter.py, unchanged but for naming the tiny tokenizer's
pre-tokenizer (a tokenizer trained here is in none of llama.cpp's tables).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_merge_memory import GiB, dir_stats, measure  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY_CONVERTER = ROOT / "tests" / "export" / "gguf_tiny_converter.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None, help="Where to write (default: a temp dir).")
    parser.add_argument("--llama-cpp", default=os.environ.get("LLAMA_CPP_DIR"),
                        help="llama.cpp checkout or unpacked llama-cpp-python sdist (default $LLAMA_CPP_DIR)")
    parser.add_argument("--outtype", default="f16", choices=["f16", "bf16", "q8_0"])
    parser.add_argument("--tiny", action="store_true", help="Toy sizes: a smoke test of the script, no figures.")
    args = parser.parse_args()
    if not args.llama_cpp:
        parser.error("pass --llama-cpp DIR or set LLAMA_CPP_DIR (see tools/bench/README.md)")

    from vlft.export.target_gguf import find_llama_cpp

    real = find_llama_cpp(args.llama_cpp).root
    root = Path(tempfile.mkdtemp(prefix="vlft-bench-gguf-", dir=args.work_dir))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    python, merge_bench = sys.executable, str(Path(__file__).with_name("bench_merge_memory.py"))
    try:
        tree = root / "llama.cpp"
        tree.mkdir()
        (tree / "convert_hf_to_gguf.py").write_text(TINY_CONVERTER.read_text().replace("REAL_LLAMA_CPP", str(real)))
        t0 = time.perf_counter()
        subprocess.run([python, merge_bench, "--_make-base", str(root / "base"), *(["--tiny"] if args.tiny else [])],
                       env=env, check=True)
        subprocess.run([python, merge_bench, "--_make-ckpt", str(root / "base"), str(root / "ckpt")], env=env,
                       check=True)
        base_bytes, largest_shard, shards = dir_stats(root / "base")
        print(f"setup: base {base_bytes / 1e9:.2f} GB bf16 in {shards} shard(s) + LoRA checkpoint in "
              f"{time.perf_counter() - t0:.0f} s")

        own = measure([python, str(tree / "convert_hf_to_gguf.py"), "--print-supported-models"], env)
        result = measure([python, "-m", "vlft.cli", "convert", str(root / "ckpt"), str(root / "out"), "--to", "gguf",
                          "--llama-cpp", str(tree), "--outtype", args.outtype], env)
        written = {p.name: p.stat().st_size for p in (root / "out").glob("*.gguf")}
        print(result["output"].strip().splitlines()[-1])
        print_table(result, own, largest_shard, base_bytes, written, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def print_table(result: dict, own: dict, largest_shard: int, base_bytes: int, written: dict, args) -> None:
    import torch
    import transformers

    shapes = "tiny shapes (smoke test, no figures)" if args.tiny else "InternVL2-2B shapes"
    budget = 1.5 * largest_shard + own["peak_rss"]
    print(f"\n{shapes}, bf16 base {base_bytes / 1e9:.2f} GB, largest shard {largest_shard / 1e9:.2f} GB; "
          f"{platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}, transformers "
          f"{transformers.__version__}; --outtype {args.outtype}\n")
    rows = [("converter's own (no model)", own["peak_rss"], own["sampled_rss"], own["wall"]),
            ("vlft convert --to gguf", result["peak_rss"], result["sampled_rss"], result["wall"])]
    for label, peak, sampled, wall in rows:
        print(f"{label:30} peak RSS {peak / GiB:6.2f} Gi   sampled tree {sampled / GiB:6.2f} Gi   wall {wall:5.0f} s")
    print(f"\nbudget 1.5 x largest shard + converter's own = {budget / GiB:.2f} Gi; sampled tree / budget = "
          f"{result['sampled_rss'] / budget:.2f} ({'met' if result['sampled_rss'] <= budget else 'NOT met'}); "
          f"sampled tree / bf16 model = {result['sampled_rss'] / base_bytes:.2f}")
    print("written: " + ", ".join(f"{name} {size / 1e9:.2f} GB" for name, size in sorted(written.items())))


if __name__ == "__main__":
    main()
