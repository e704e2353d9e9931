"""LoRA training throughput and MFU on an InternVL2-2B-shaped model (random init), through `vlft train`.

Shape: InternViT-300M (hidden 1024, 24 layers, 16 heads, MLP 4096, 448 px tiles, patch 14) + pixel shuffle
0.5 + MLP connector + a Llama-layout 1.8B LLM (hidden 2048, 24 layers, 16 heads, 8 KV heads, MLP 8192,
vocab 92553) -- InternVL2-2B's shapes, with a Llama-layout LLM in place of InternLM2 (same FLOPs). The
checkpoint is written random-init to a temp dir in the transformers-native layout, then trained with
`vlft.engine.train.train_from_config` from a generated config: bf16, DeepSpeed ZeRO-2, gradient
checkpointing, flash_attention_2 when flash-attn is installed (else sdpa), packing, LoRA r16 on the LLM's
q/k/v/o/gate/up/down + the connector, vision tower frozen.

    python tools/bench/gpu_lora.py                  # needs a CUDA GPU; ~20 steps
    python tools/bench/gpu_lora.py --tiny           # a tiny model, 3 steps on CPU: keeps the script working
    python tools/bench/gpu_lora.py --peers /work/venvs   # vlft vs LLaMA-Factory vs ms-swift on this GPU

Model FLOPs counted per optimizer step (gradient-checkpointing recompute NOT counted, i.e. MFU, not HFU):
- LLM, per real text token (frozen base + LoRA): forward 2*N + backward 2*N (activation gradients only;
  frozen weights get no weight gradients) = 4*N, N = LLM linear weights incl. lm_head (embeddings
  excluded); plus 6*N_lora for the LoRA weights (forward, activation and weight gradients);
  causal attention per packed sample of s tokens: forward 2*L*d*s^2 (QK^T + AV, halved by causality),
  backward 2x forward -> 6*L*d*s^2.
- Vision encoder, per tile (frozen, forward only: nothing upstream needs its gradients):
  2*N_vit*n + 4*L_v*d_v*n^2 (n = 1025 patches incl. CLS; bidirectional attention) + the patch embedding.
- Connector, per image token (trained): 6*N_conn.
MFU = counted FLOPs / time / the GPU's dense bf16 peak (H100/H200 SXM 989 TFLOP/s, H100 PCIe 756,
A100 312; --peak-tflops for another).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import make_data  # noqa: E402  (same folder: the mixed-length dataset maker)


@dataclass(frozen=True)
class Shape:
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    tile_size: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_mlp: int
    vocab: int


INTERNVL2_2B = Shape(vision_hidden=1024, vision_layers=24, vision_heads=16, vision_mlp=4096, tile_size=448,
                     text_hidden=2048, text_layers=24, text_heads=16, text_kv_heads=8, text_mlp=8192, vocab=92553)
TINY = Shape(vision_hidden=64, vision_layers=2, vision_heads=4, vision_mlp=256, tile_size=56,
             text_hidden=128, text_layers=2, text_heads=4, text_kv_heads=2, text_mlp=256, vocab=1024)

PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12)]


def write_random_internvl(out_dir: Path, shape: Shape, device: str, dtype: torch.dtype) -> Path:
    """A random-init transformers-native InternVL checkpoint (+ a tiny local tokenizer) in `out_dir`."""
    from transformers import AutoConfig, InternVLConfig, InternVLForConditionalGeneration

    from vlft.tiny.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(out_dir, family="internvl", chat_style="chatml", vocab_size=512)
    text = AutoConfig.for_model(
        model_type="llama", hidden_size=shape.text_hidden, num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads, num_key_value_heads=shape.text_kv_heads,
        intermediate_size=shape.text_mlp, vocab_size=max(shape.vocab, len(tokenizer)),
        max_position_embeddings=8192, tie_word_embeddings=False)
    vision = dict(model_type="internvl_vision", hidden_size=shape.vision_hidden, num_hidden_layers=shape.vision_layers,
                  num_attention_heads=shape.vision_heads, intermediate_size=shape.vision_mlp,
                  image_size=shape.tile_size, patch_size=14, attention_bias=True, norm_type="layer_norm",
                  use_mean_pooling=True)
    config = InternVLConfig(vision_config=vision, text_config=text.to_dict(),
                            image_token_id=tokenizer.context_image_token_id, downsample_ratio=0.5,
                            image_seq_length=(shape.tile_size // 14 // 2) ** 2, vision_feature_layer=-1,
                            tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):  # initialising 2B parameters on the GPU takes seconds, on a CPU minutes
        model = InternVLForConditionalGeneration._from_config(config, dtype=dtype)
    model.save_pretrained(out_dir)
    del model
    return out_dir


def flops_model(shape: Shape, lora_r: int) -> dict:
    """Per-unit FLOP coefficients (see the module docstring)."""
    d, hd = shape.text_hidden, shape.text_hidden // shape.text_heads
    kv = shape.text_kv_heads * hd
    per_layer = {"q": (d, d), "k": (d, kv), "v": (d, kv), "o": (d, d),
                 "gate": (d, shape.text_mlp), "up": (d, shape.text_mlp), "down": (shape.text_mlp, d)}
    n_llm = shape.text_layers * sum(i * o for i, o in per_layer.values()) + d * shape.vocab
    n_lora = shape.text_layers * sum(lora_r * (i + o) for i, o in per_layer.values())
    dv, patches = shape.vision_hidden, (shape.tile_size // 14) ** 2
    n = patches + 1
    n_vit = shape.vision_layers * (4 * dv * dv + 2 * dv * shape.vision_mlp)
    vision_per_tile = 2 * n_vit * n + 4 * shape.vision_layers * dv * n * n + 2 * 3 * 14 * 14 * dv * patches
    n_conn = 4 * dv * d + d * d
    return {"per_token": 4 * n_llm + 6 * n_lora, "attn_per_s2": 6 * shape.text_layers * d,
            "per_tile": vision_per_tile + 6 * n_conn * patches // 4, "n_llm": n_llm, "n_lora": n_lora,
            "n_vit": n_vit}


class Counter:
    """Wraps the composed model's forward: real tokens, sum of squared sample lengths, tiles, per call."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.calls: list[tuple[float, int, int, int]] = []  # (time, real tokens, sum s^2, tiles)
        self.step_ends: list[float] = []

    def install(self) -> None:
        from vlft.model.vlm import VisionLanguageModel

        original, counter = VisionLanguageModel.forward, self

        def forward(model, input_ids, pixel_values=None, attention_mask=None, position_ids=None, **kw):
            counter.record(input_ids, pixel_values, attention_mask, position_ids)
            return original(model, input_ids, pixel_values, attention_mask, position_ids, **kw)

        VisionLanguageModel.forward = forward

    def record(self, input_ids, pixel_values, attention_mask, position_ids) -> None:
        tokens = squares = 0
        for row in range(input_ids.shape[0]):
            if position_ids is not None:  # packed: a segment starts wherever the position restarts at 0
                starts = (position_ids[row] == 0).nonzero().flatten().tolist() + [input_ids.shape[1]]
                for a, b in zip(starts, starts[1:]):
                    if bool((input_ids[row, a:b] != self.pad_id).any()):  # the trailing pad segment is not real
                        tokens, squares = tokens + (b - a), squares + (b - a) ** 2
            else:
                n = int(attention_mask[row].sum()) if attention_mask is not None else input_ids.shape[1]
                tokens, squares = tokens + n, squares + n * n
        tiles = 0 if pixel_values is None else int(pixel_values.shape[0])
        self.calls.append((time.perf_counter(), tokens, squares, tiles))


def write_config(path: Path, *, base: Path, data: dict, args, attn: str, dtype: str) -> Path:
    sections = {
        "model": {"family": "internvl", "path": str(base), "dtype": dtype, "attn_implementation": attn,
                  "gradient_checkpointing": True, "connector": {"train": True},
                  "llm": {"train": "lora", "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r, "dropout": 0.05}}},
        "data": {"datasets": [{"path": data["data"], "image_root": data["image_root"]}], "template": "internvl2_5",
                 "max_length": args.max_length, "packing": True, "num_workers": args.workers,
                 "tiling": {"mode": "dynamic", "min_tiles": 1, "max_tiles": 6}},
        "schedule": {"max_steps": args.steps, "micro_batch_size": args.rows, "gradient_accumulation": 1,
                     "lr": 1e-4, "warmup_ratio": 0.03, "seed": 0},
        "engine": {"save_steps": 10**6, "save_total_limit": 1, "logging_steps": 1},
    }
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    return path


def run_peers(args) -> None:
    """The same comparison as bench_peers.py (vlft, LLaMA-Factory, ms-swift; padding and packing), on this GPU:
    InternVL2-2B widths, bf16, flash-attention 2 where installed; --tiny keeps it on CPU at toy sizes."""
    import subprocess

    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("gpu_lora.py --peers: no CUDA GPU here; add --tiny for the CPU smoke test")
    bench = Path(__file__).resolve().parent / "bench_peers.py"
    cmd = [sys.executable, str(bench), "--venvs", args.peers, "--models", "internvl,llava",
           *(["--tiny"] if args.tiny else ["--gpu"])]
    if args.samples:
        cmd += ["--samples", str(args.samples)]
    raise SystemExit(subprocess.call(cmd))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model, a few steps on CPU (a smoke test)")
    parser.add_argument("--peers", metavar="VENVS",
                        help="instead: the side-by-side with LLaMA-Factory and ms-swift on this GPU (bench_peers.py "
                             "--gpu; VENVS holds their venvs llamafactory/ and swift/)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 20; --tiny 3)")
    parser.add_argument("--warmup-steps", type=int, help="steps left out of the timing (default 3; --tiny 1)")
    parser.add_argument("--rows", type=int, default=2, help="packed rows per step (default 2)")
    parser.add_argument("--max-length", type=int, help="tokens per packed row (default 4096; --tiny 1024)")
    parser.add_argument("--samples", type=int, help="dataset size (default 400; --tiny 24)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers (default 4; --tiny 0)")
    parser.add_argument("--deepspeed", default="zero2", help="zero2 (default), zero3 or none")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, when not recognised")
    args = parser.parse_args()
    if args.peers:
        run_peers(args)
        return

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        raise SystemExit("gpu_lora.py: no CUDA GPU here; run with --tiny for the CPU smoke test")
    tiny = args.tiny
    shape = TINY if tiny else INTERNVL2_2B
    args.steps = args.steps or (3 if tiny else 20)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (1 if tiny else 3)
    args.max_length = args.max_length or (1024 if tiny else 4096)
    args.samples = args.samples or (24 if tiny else 400)
    if tiny:
        args.workers = 0
    if args.steps <= args.warmup_steps:
        raise SystemExit(f"--steps ({args.steps}) must exceed --warmup-steps ({args.warmup_steps})")
    device = "cuda" if cuda and not tiny else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    flash = device == "cuda" and importlib.util.find_spec("flash_attn") is not None
    attn = "flash_attention_2" if flash else "sdpa"

    from vlft.engine.train import train_from_config

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        base = write_random_internvl(root / "base", shape, device, getattr(torch, dtype))
        data = make_data(root / "data", args.samples, tile_size=shape.tile_size, long_words=(100, 300))
        config = write_config(root / "gpu_lora.py", base=base, data=data, args=args, attn=attn, dtype=dtype)
        print(f"# checkpoint + data in {time.perf_counter() - start:.0f}s", flush=True)

        from transformers import AutoTokenizer

        pad_id = AutoTokenizer.from_pretrained(base).pad_token_id or 0
        counter = Counter(pad_id)
        counter.install()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        train_from_config(config, work_dir=str(root / "work"), deepspeed=args.deepspeed,
                          on_step=lambda step, loss: counter.step_ends.append(time.perf_counter()))
        peak_gb = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None

    t0, t1 = counter.step_ends[args.warmup_steps - 1], counter.step_ends[-1]
    timed = [c for c in counter.calls if t0 < c[0] <= t1]
    seconds = t1 - t0
    tokens, squares, tiles = (sum(c[i] for c in timed) for i in (1, 2, 3))
    coef = flops_model(shape, args.lora_r)
    flops = tokens * coef["per_token"] + squares * coef["attn_per_s2"] + tiles * coef["per_tile"]
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    if peak is None and device == "cuda":
        peak = next((p for key, p in PEAK_BF16 if key in name), None)

    print(f"\ngpu_lora: {'tiny (CPU smoke test)' if tiny else 'InternVL2-2B shape'} on {name}; {dtype}, "
          f"{args.deepspeed}, gradient checkpointing, {attn}, packing {args.rows} x {args.max_length} tokens, "
          f"LoRA r{args.lora_r}")
    print(f"params: LLM linear {coef['n_llm'] / 1e6:,.1f}M, LoRA {coef['n_lora'] / 1e6:,.2f}M, "
          f"vision {coef['n_vit'] / 1e6:,.1f}M")
    print(f"timed steps {len(counter.step_ends) - args.warmup_steps} ({seconds:.1f}s): {tokens} real tokens, "
          f"{tiles} tiles")
    print(f"tokens/s          {tokens / seconds:,.0f}")
    print(f"model TFLOP/s     {flops / seconds / 1e12:.2f}")
    print(f"MFU               {flops / seconds / peak:.1%}" if peak else "MFU               n/a (no GPU peak known)")
    print(f"peak GPU memory   {peak_gb:.1f} GiB" if peak_gb is not None else "peak GPU memory   n/a (CPU)")


if __name__ == "__main__":
    main()
