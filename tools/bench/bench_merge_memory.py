"""Peak memory of `vlft merge` and `vlft convert --to hf` against the usual transformers + peft script.

Builds a random-init InternVL2-2B-shaped checkpoint (InternViT-300M: hidden 1024, 24 layers, 16 heads,
448 px; a Llama-layout 1.8B LLM as InternLM2 becomes in memory: hidden 2048, 24 layers, 16 heads, 8 KV
heads, intermediate 8192, vocab 92553) in bf16, streamed to disk tensor by tensor from a meta-device
model, with a tiny local tokenizer. A LoRA training checkpoint (r=16 on every LLM linear, trained
connector) is written on it the way `vlft train` does. Then each contender runs in its own child process,
whose peak RSS is read from the kernel (`os.wait4` ru_maxrss) and cross-checked by psutil sampling:

    vlft merge CKPT OUT --dtype bf16                      (2 GB shards, the default)
    vlft merge CKPT OUT --dtype bf16 --max-shard-size 5GB (the whole model in one file)
    vlft convert CKPT OUT --to hf --no-verify --max-shard-size 1GB
    vlft convert CKPT OUT --to internvl-chat --no-verify --max-shard-size 1GB
    peer: from_pretrained(base) -> PeftModel.from_pretrained(llm, adapter).merge_and_unload() ->
          load connector -> save_pretrained(OUT, max_shard_size="1GB")

    python tools/bench/bench_merge_memory.py                       # in a temp dir under /tmp
    python tools/bench/bench_merge_memory.py --work-dir /data/b    # elsewhere (needs ~14 GB free)
    python tools/bench/bench_merge_memory.py --repeat 2            # round-robin twice (noisy machines)
    python tools/bench/bench_merge_memory.py --tiny                # toy sizes: does the script still run?

Everything written is deleted at the end (outputs right after they are measured), so at most the base,
the checkpoint and one output (~9 GB) are on disk at once.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GiB = 2**30

VISION = dict(model_type="internvl_vision", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
              intermediate_size=4096, image_size=448, patch_size=14, attention_bias=True, norm_type="layer_norm",
              use_qk_norm=False, use_mean_pooling=True, layer_scale_init_value=0.1)
TEXT = dict(model_type="llama", hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
            intermediate_size=8192, vocab_size=92553, max_position_embeddings=32768, rms_norm_eps=1e-5,
            attention_bias=False, tie_word_embeddings=False, rope_parameters={"rope_type": "default",
                                                                              "rope_theta": 1000000.0})

#: --tiny: the same layout at toy sizes, so the test suite can run the whole benchmark in seconds.
#: 4 vision layers: the fewest llama.cpp's converter takes (bench_gguf.py --tiny builds this base too).
TINY_VISION = {**VISION, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
               "intermediate_size": 128, "image_size": 56}
TINY_TEXT = {**TEXT, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128}

# Internal module paths of InternVLForConditionalGeneration -> the "-hf" checkpoint names.
_LEGACY = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
           ("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector."))


def _legacy_name(name: str) -> str:
    for internal, legacy in _LEGACY:
        if name.startswith(internal):
            return legacy + name[len(internal):]
    return name


def make_base(out: Path, tiny: bool = False) -> Path:
    """Stream a random bf16 InternVL2-2B-shaped checkpoint to `out`; one tensor in memory at a time."""
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    from vlft.export.writers import write_sharded
    from vlft.tiny.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(out, family="internvl", chat_style="chatml")
    vision, text = (TINY_VISION, TINY_TEXT) if tiny else (VISION, TEXT)
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.context_image_token_id,
                            downsample_ratio=0.5, image_seq_length=patches // 4, vision_feature_layer=-1,
                            tie_word_embeddings=False)
    config.text_config.tie_word_embeddings = False
    config.architectures = ["InternVLForConditionalGeneration"]
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        skeleton = InternVLForConditionalGeneration(config)
    generator = torch.Generator().manual_seed(0)

    def tensors():
        for name, meta in skeleton.state_dict().items():
            tensor = torch.empty(meta.shape, dtype=torch.float32)
            if name.endswith("norm.weight") or "layernorm" in name and name.endswith("weight"):
                tensor.fill_(1.0)
            elif name.endswith(".bias"):
                tensor.zero_()
            elif "lambda" in name:
                tensor.fill_(0.1)
            else:
                tensor.normal_(0.0, 0.02, generator=generator)
            yield _legacy_name(name), tensor.to(torch.bfloat16)

    write_sharded(tensors(), out, dtype="bf16", max_shard_size="2GB")
    config.save_pretrained(out)
    return out


def make_checkpoint(base: Path, out: Path) -> Path:
    """A LoRA checkpoint in `vlft train`'s format: LoRA r=16 on the LLM, connector trained, all moved."""
    import torch

    from vlft.config import spec_from_dict, spec_to_dict
    from vlft.model.adapters import apply_training_policy
    from vlft.model.load import build_vlm
    from vlft.model.trained_state import save_trained_state

    spec = spec_from_dict({"model": {"family": "internvl", "path": str(base), "dtype": "bfloat16",
                                     "attn_implementation": "eager", "llm": {"lora": {"r": 16, "alpha": 32}}},
                           "data": {"template": "internvl2_5", "tiling": {"max_tiles": 6}}})
    model, tokenizer = build_vlm(spec.model)
    apply_training_policy(model, spec.model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_((torch.randn(param.shape, generator=generator) * 0.01).to(param.dtype))
    save_trained_state(model, out, meta={"config": spec_to_dict(spec), "step": 1, "base_model": str(base)})
    tokenizer.save_pretrained(out)
    return out


PEER = r"""
import sys, torch
from pathlib import Path
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, InternVLForConditionalGeneration
from peft import PeftModel
base, ckpt, out = (Path(a) for a in sys.argv[1:4])
model = InternVLForConditionalGeneration.from_pretrained(base, dtype=torch.bfloat16)
with torch.device("meta"):                      # a CausalLM view of the VLM's LLM, for the saved adapter
    llm = AutoModelForCausalLM.from_config(model.config.text_config)
llm.model, llm.lm_head = model.model.language_model, model.lm_head
PeftModel.from_pretrained(llm, ckpt / "llm_adapter").merge_and_unload()
trained = {k.removeprefix("multi_modal_projector."): v for k, v in load_file(ckpt / "trained.safetensors").items()}
model.model.multi_modal_projector.load_state_dict(trained)
model.save_pretrained(out, max_shard_size="1GB")
"""


def measure(command: list[str], env: dict) -> dict:
    """Run `command`; peak RSS of the child from the kernel (ru_maxrss) and from psutil sampling (tree)."""
    import psutil

    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = [0]

    def sample():
        proc = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    output = child.stdout.read().decode(errors="replace")
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({child.returncode}):\n{output[-3000:]}")
    return {"peak_rss": usage.ru_maxrss * 1024, "sampled_rss": peak[0], "wall": wall, "output": output}


def dir_stats(path: Path) -> tuple[int, int, int]:
    """(total weight bytes, largest weight file, weight files) of a directory."""
    files = list(path.glob("*.safetensors"))
    sizes = [f.stat().st_size for f in files]
    return sum(sizes), max(sizes), len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None, help="Where to write (default: a temp dir).")
    parser.add_argument("--keep", action="store_true", help="Keep what was written (default: delete it).")
    parser.add_argument("--repeat", type=int, default=1,
                        help="Rounds of all contenders (round-robin); the table shows the highest peak and the fastest "
                             "wall.")
    parser.add_argument("--tiny", action="store_true", help="Toy sizes: a smoke test of the script, no figures.")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="vlft-bench-merge-", dir=args.work_dir))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    python = sys.executable
    try:
        t0 = time.perf_counter()
        # Each setup step in its own process, so its memory is gone before the measurements.
        subprocess.run([python, __file__, "--_make-base", str(root / "base"), *(["--tiny"] if args.tiny else [])],
                       env=env, check=True)
        subprocess.run([python, __file__, "--_make-ckpt", str(root / "base"), str(root / "ckpt")], env=env, check=True)
        base_bytes, _, _ = dir_stats(root / "base")
        print(f"setup: base {base_bytes / 1e9:.2f} GB bf16 + LoRA checkpoint in {time.perf_counter() - t0:.0f} s")

        runs = {
            "vlft merge (bf16)": [python, "-m", "vlft.cli", "merge", str(root / "ckpt"), str(root / "out"),
                                  "--dtype", "bf16"],
            "vlft merge (bf16, one 5GB shard)": [python, "-m", "vlft.cli", "merge", str(root / "ckpt"),
                                                 str(root / "out"), "--dtype", "bf16", "--max-shard-size", "5GB"],
            "vlft convert --to hf (1GB shards)": [python, "-m", "vlft.cli", "convert", str(root / "ckpt"),
                                                  str(root / "out"), "--to", "hf", "--no-verify",
                                                  "--max-shard-size", "1GB", "--dtype", "bf16"],
            "vlft convert --to internvl-chat (1GB shards)": [python, "-m", "vlft.cli", "convert", str(root / "ckpt"),
                                                             str(root / "out"), "--to", "internvl-chat",
                                                             "--no-verify", "--max-shard-size", "1GB", "--dtype",
                                                             "bf16"],
            "peer: transformers + peft save_pretrained": [python, "-c", PEER, str(root / "base"), str(root / "ckpt"),
                                                          str(root / "out")],
        }
        best: dict[str, tuple] = {}
        for _ in range(args.repeat):  # round-robin, so a noisy minute hits every contender alike
            for label, command in runs.items():
                result = measure(command, env)
                total, largest, files = dir_stats(root / "out")
                shutil.rmtree(root / "out")
                if label in best:
                    old = best[label][0]
                    result = {**result, "peak_rss": max(result["peak_rss"], old["peak_rss"]),
                              "sampled_rss": max(result["sampled_rss"], old["sampled_rss"]),
                              "wall": min(result["wall"], old["wall"])}
                best[label] = (result, total, largest, files)
        print_table([(label, *values) for label, values in best.items()], base_bytes, args.repeat, args.tiny)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def print_table(rows, model_bytes: int, repeat: int, tiny: bool) -> None:
    import peft
    import torch
    import transformers

    peer_peak = rows[-1][1]["peak_rss"]
    shapes = "tiny shapes (smoke test, no figures)" if tiny else "InternVL2-2B shapes"
    print(f"\n{shapes}, bf16 weights {model_bytes / 1e9:.2f} GB ({model_bytes / GiB:.2f} GiB); "
          f"{platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}, transformers "
          f"{transformers.__version__}, peft {peft.__version__}; {repeat} round(s)\n")
    header = (f"{'':44} {'peak RSS':>9} {'(sampled)':>10} {'RSS/model':>9} {'vs peer':>8} {'RSS/shard':>9} "
              f"{'wall':>7} {'largest shard':>14} {'written':>9}")
    print(header)
    print("-" * len(header))
    for label, result, total, largest, files in rows:
        print(f"{label:44} {result['peak_rss'] / GiB:>7.2f}Gi {result['sampled_rss'] / GiB:>8.2f}Gi "
              f"{result['peak_rss'] / model_bytes:>9.2f} {result['peak_rss'] / peer_peak:>8.2f} "
              f"{result['peak_rss'] / largest:>9.2f} {result['wall']:>6.0f}s {largest / 1e9:>11.2f} GB "
              f"{total / 1e9:>6.2f} GB ({files} files)")
    print("\npeak RSS: the child's ru_maxrss (kernel), highest over rounds; sampled: psutil every 20 ms; wall: "
          "fastest round, imports included; RSS/shard: peak RSS / the largest shard written (goal <= 1.5); "
          "GB = 1e9 bytes, Gi = 2^30.")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--_make-base":
        make_base(Path(sys.argv[2]), tiny="--tiny" in sys.argv[3:])
    elif len(sys.argv) > 3 and sys.argv[1] == "--_make-ckpt":
        make_checkpoint(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
