"""Training side by side with the tools users would pick instead: vlft against LLaMA-Factory and ms-swift.

The same tiny checkpoint (InternVL -hf, and LLaVA-1.5 with `--models internvl,llava`), written locally by
`vlft.tiny.checkpoints` with its processor files and chat template, and the same dataset (bench_train's mixed
lengths: short VQA answers and long descriptions, 1-7 tiles), written in each tool's own format:

- vlft: LLaVA JSON;
- LLaMA-Factory: sharegpt (`conversations` + `images`) with a `dataset_info.json`;
- ms-swift: a `messages` + `images` JSONL.

Each tool trains it the same way: LoRA r 16 / alpha 32 / dropout 0.05 on the LLM's q/k/v/o/gate/up/down only
(vision tower frozen), the connector trained in full, the same max tiles, lr 2e-4 cosine with 3% warm-up, one
epoch, micro-batch 4 x accumulation 2, fp32, sdpa, no data loader workers, one torch thread; packing off and
on (LLaMA-Factory's `neat_packing`, ms-swift's `packing`). Every run is a child process: vlft under this
python, each peer under its own venv's python (`peer_probe.py`, which records the peer's own Trainer steps).
The contenders run interleaved (vlft, LLaMA-Factory, ms-swift, then packing) because the machine is shared.

Per run: samples and real tokens per CPU second and per wall second after `--warmup-steps` steps, start-up
(process launch to the end of the first optimizer step), peak RSS of the process tree (sampled every 0.1 s),
the trainable-parameter count, tokens seen (real / computed: padding or packing efficiency), first and
last losses. A peer that cannot train the checkpoint here gets one line saying why and a row marked so.

`--load` is the second table: photo-sized JPEGs, 448 px tiles, up to 12 tiles an image, `--workers` data loader
workers each, and no model compute: each tool builds its micro-batches as in training (read, decode, tile,
normalise, tokenise, collate), and its training step returns a zero loss at once (`VLFT_BENCH_FEED_ONLY`, read
by this script's vlft child and by peer_probe.py). Samples/s (wall) is then how fast each pipeline can feed a
model: the bound on a GPU run.

    VLFT_PEERS_VENVS=/work/venvs python tools/bench/bench_peers.py           # ~15 min on 2 CPU cores
    VLFT_PEERS_VENVS=/work/venvs python tools/bench/bench_peers.py --load    # the image-load table
    python tools/bench/bench_peers.py --tiny                                 # CI smoke size

Peers' venvs: `$VLFT_PEERS_VENVS/llamafactory` and `$VLFT_PEERS_VENVS/swift` (recipe in README.md). This script
never installs them; a missing venv is a marked row.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import make_data  # noqa: E402  (same folder: the mixed-length dataset maker)

HERE = Path(__file__).resolve()
PROBE = HERE.parent / "peer_probe.py"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LLM_REGEX = rf".*language_model.*\.({'|'.join(LORA_TARGETS)})"
#: Set for `--load` runs: every tool's micro-batch is built as in training, then no model computes on it.
FEED_ONLY = "VLFT_BENCH_FEED_ONLY"


@dataclass(frozen=True)
class ModelKind:
    """One architecture as each tool names it."""
    name: str
    family: str               # vlft's
    vlft_template: str
    llamafactory_template: str
    swift_model_type: str
    swift_template: str
    projector: str            # the connector's module name in the transformers class


MODELS = {
    "internvl": ModelKind("InternVL -hf (Qwen2)", "internvl", "internvl2_5", "intern_vl", "internvl", "internvl_hf",
                          "multi_modal_projector"),
    "llava": ModelKind("LLaVA-1.5 -hf (Llama)", "llava", "vicuna_v1", "llava", "llava1_5_hf", "llava1_5_hf",
                       "multi_modal_projector"),
}


# ------------------------------------------------------------------------------------------ workspace


def sizes_for(args):
    from vlft.tiny.checkpoints import TinySizes

    if args.tiny:
        return TinySizes()
    if args.gpu:
        # InternVL2-2B's widths and depths (InternViT-300M, 448 px tiles; a 2048-wide 24-layer LLM); the tiny
        # writer's MLPs are 2x wide where 2B's are 4x, so this is about 1.5B parameters, random init.
        return TinySizes(vision_hidden=1024, vision_layers=24, vision_heads=16, tile_size=448, text_hidden=2048,
                         text_layers=24, text_heads=16, text_kv_heads=8, vocab_size=4096)
    if args.load:
        # 448 px tiles (1024 patches, 256 image tokens each); a text model small enough that pixels dominate.
        return TinySizes(vision_hidden=32, vision_layers=1, vision_heads=2, tile_size=448, text_hidden=64,
                         text_layers=1, text_heads=2, text_kv_heads=1, vocab_size=512)
    # bench_train's sizes: compute, not Python overhead, dominates.
    return TinySizes(vision_hidden=128, vision_layers=2, vision_heads=4, tile_size=112, text_hidden=512,
                     text_layers=4, text_heads=8, text_kv_heads=4, vocab_size=512)


def write_base(root: Path, kind: str, args) -> Path:
    """A tiny checkpoint with what the peers load besides the weights: processor files, the chat template
    and the image tokens named in tokenizer_config.json (what `vlft convert --to hf` writes)."""
    from transformers import AutoConfig, AutoTokenizer

    from vlft.data.templates import get_template
    from vlft.data.tiling import TilingSpec
    from vlft.export.hf_files import write_processor_files, write_tokenizer
    from vlft.families import normalisation_of
    from vlft.model.load import official_info
    from vlft.tiny.checkpoints import make_tiny_internvl_hf, make_tiny_llava_hf

    sizes = sizes_for(args)
    make = make_tiny_internvl_hf if kind == "internvl" else make_tiny_llava_hf
    base = make(root / f"base-{kind}", sizes=sizes, seed=0)
    config = AutoConfig.from_pretrained(base)
    info = official_info(config)
    mean, std = normalisation_of(info)
    mode = "dynamic" if kind == "internvl" else "pad_square"
    tiling = TilingSpec(mode=mode, tile_size=info.tile_size, min_tiles=1, max_tiles=args.max_tiles, mean=mean,
                        std=std)
    write_processor_files(base, info, tiling)
    write_tokenizer(base, AutoTokenizer.from_pretrained(base), family=info.family,
                    template=get_template(MODELS[kind].vlft_template))
    return base


def write_datasets(root: Path, args, tile_size: int) -> dict:
    """The one dataset in vlft's, LLaMA-Factory's and ms-swift's formats; returns their paths."""
    long_words = (100, 300) if not args.tiny else (10, 30)
    paths = make_data(root, args.samples, tile_size=tile_size, seed=0, long_words=long_words)
    if args.load:
        paths = make_load_images(root, paths, args)
    rows = json.loads(Path(paths["data"]).read_text())
    sharegpt = [{"conversations": r["conversations"], "images": [str(root / r["image"])]} for r in rows]
    lf_dir = root / "llamafactory-data"
    lf_dir.mkdir()
    (lf_dir / "bench.json").write_text(json.dumps(sharegpt))
    (lf_dir / "dataset_info.json").write_text(json.dumps({"bench": {
        "file_name": "bench.json", "formatting": "sharegpt",
        "columns": {"messages": "conversations", "images": "images"},
        "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}}}))
    roles = {"human": "user", "gpt": "assistant"}
    swift_file = root / "swift.jsonl"
    swift_file.write_text("".join(json.dumps({
        "messages": [{"role": roles[t["from"]], "content": t["value"]} for t in r["conversations"]],
        "images": [str(root / r["image"])]}) + "\n" for r in rows))
    return {**paths, "llamafactory_dir": str(lf_dir), "swift_file": str(swift_file)}


def make_load_images(root: Path, paths: dict, args) -> dict:
    """Photo-sized JPEGs (up to 2000 px a side) in place of the small ones: 448 px tiles, up to 12 a picture."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    rows = json.loads(Path(paths["data"]).read_text())
    for i, row in enumerate(rows):
        w, h = (int(v) for v in rng.integers(500, 2000, size=2))
        field = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(field, "RGB").resize((w, h), Image.BICUBIC)
        image.save(root / row["image"], quality=90)
    return paths


def precision(args) -> dict:
    """fp32 + sdpa on CPU; on a GPU (`--gpu`) bf16 and flash-attention 2 when flash-attn is installed."""
    if not args.gpu:
        return {"dtype": "float32", "attn": "sdpa", "flash": False}
    import importlib.util

    flash = importlib.util.find_spec("flash_attn") is not None
    return {"dtype": "bfloat16", "attn": "flash_attention_2" if flash else "sdpa", "flash": flash}


def vlft_config(path: Path, base: Path, data: dict, kind: str, args, *, packing: bool) -> Path:
    tiling = ({"mode": "dynamic", "min_tiles": 1, "max_tiles": args.max_tiles} if kind == "internvl"
              else {"mode": "pad_square"})
    sections = {
        "model": {"family": MODELS[kind].family, "path": str(base), "dtype": precision(args)["dtype"],
                  "attn_implementation": precision(args)["attn"],
                  "gradient_checkpointing": args.gradient_checkpointing == "on",
                  "connector": {"train": True, **({} if kind == "internvl" else {"downsample_ratio": 1.0})},
                  "llm": {"train": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05,
                                                    "target_modules": list(LORA_TARGETS)}}},
        "data": {"datasets": [{"path": data["data"], "image_root": data["image_root"]}],
                 "template": MODELS[kind].vlft_template, "max_length": args.max_length, "packing": packing,
                 "pack_length": args.pack_length, "tiling": tiling, "num_workers": args.workers},
        "schedule": {"epochs": 1, "micro_batch_size": args.micro_batch, "gradient_accumulation": args.accumulation,
                     "lr": 2e-4, "warmup_ratio": 0.03, "seed": 0},
        "engine": {"save_steps": 10**6, "save_total_limit": 1, "logging_steps": 1},
    }
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    return path


def llamafactory_config(path: Path, base: Path, data: dict, kind: str, args, out: Path, *, packing: bool) -> Path:
    config = {
        "model_name_or_path": str(base), "template": MODELS[kind].llamafactory_template, "trust_remote_code": True,
        "stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_rank": 16, "lora_alpha": 32,
        "lora_dropout": 0.05, "lora_target": ",".join(LORA_TARGETS), "freeze_vision_tower": True,
        "freeze_multi_modal_projector": False,
        "additional_target": MODELS[kind].projector, "dataset": "bench", "dataset_dir": data["llamafactory_dir"],
        "cutoff_len": args.max_length, "overwrite_cache": True, "preprocessing_num_workers": None,
        "dataloader_num_workers": args.workers, "output_dir": str(out), "overwrite_output_dir": True,
        "logging_steps": 1, "save_strategy": "no", "per_device_train_batch_size": args.micro_batch,
        "gradient_accumulation_steps": args.accumulation, "learning_rate": 2e-4, "num_train_epochs": 1.0,
        "lr_scheduler_type": "cosine", "warmup_ratio": 0.03, "report_to": "none", "seed": 0, "bf16": False,
        "fp16": False, "use_cpu": not args.gpu, "packing": packing, "neat_packing": packing,
        "image_max_pixels": 4096 * 4096, "disable_tqdm": True, "plot_loss": False,
        "disable_gradient_checkpointing": args.gradient_checkpointing == "off",
    }
    mode = precision(args)
    config.update(bf16=mode["dtype"] == "bfloat16", flash_attn="fa2" if mode["flash"] else "sdpa")
    path.write_text(json.dumps(config))
    return path


def swift_args(base: Path, data: dict, kind: str, args, out: Path, *, packing: bool) -> list[str]:
    m = MODELS[kind]
    pairs = {
        "model": str(base), "model_type": m.swift_model_type, "template": m.swift_template, "tuner_type": "lora",
        "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_regex": LLM_REGEX,
        "modules_to_save": m.projector, "freeze_vit": "true", "freeze_aligner": "true", "freeze_llm": "false",
        "dataset": data["swift_file"], "split_dataset_ratio": 0, "max_length": args.max_length,
        "truncation_strategy": "left", "per_device_train_batch_size": args.micro_batch,
        "gradient_accumulation_steps": args.accumulation, "learning_rate": 2e-4, "num_train_epochs": 1,
        "lr_scheduler_type": "cosine", "warmup_ratio": 0.03, "logging_steps": 1, "save_strategy": "no",
        "torch_dtype": precision(args)["dtype"], "attn_impl": "flash_attn" if precision(args)["flash"] else "sdpa",
        "dataloader_num_workers": args.workers,
        "dataset_num_proc": 1, "output_dir": str(out), "report_to": "none", "seed": 0, "use_hf": "true",
        "packing": "true" if packing else "false", "disable_tqdm": "true",
        "add_version": "false", "gradient_checkpointing": "true" if args.gradient_checkpointing == "on" else "false",
    }
    return [part for key, value in pairs.items() for part in (f"--{key}", str(value))]


# ------------------------------------------------------------------------------------------ vlft child


def child_vlft(config: str, events: str) -> None:
    """vlft's engine with the same records peer_probe.py writes for the peers."""
    import torch

    from vlft.engine import progress
    from vlft.engine.train import train_from_config
    from vlft.model.vlm import VisionLanguageModel

    out = open(events, "a", buffering=1)
    pending = {"rows": 0, "computed": 0}
    first = [True]
    original_forward = VisionLanguageModel.forward

    def forward(model, *a, **kw):
        if first[0]:
            first[0] = False
            out.write(json.dumps({"event": "params", "wall": time.time(),
                                  "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                                  "total": sum(p.numel() for p in model.parameters())}) + "\n")
        ids = kw.get("input_ids")
        if ids is not None:
            pending["rows"] += int(ids.shape[0])
            pending["computed"] += int(ids.numel())
        if FEED_ONLY in os.environ:  # --load: the batch arrived; a zero loss on a trainable weight, no compute
            from types import SimpleNamespace

            anchor = next(p for p in model.parameters() if p.requires_grad)
            return SimpleNamespace(loss=anchor.sum() * 0.0)
        return original_forward(model, *a, **kw)

    VisionLanguageModel.forward = forward
    original_step = progress.TrainLog.step

    def step(log, number, **kw):
        gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        out.write(json.dumps({"event": "step", "step": number, "wall": time.time(), "cpu": time.process_time(),
                              "gpu_peak_mb": gpu, "samples": kw["samples"], "real": kw["tokens"], **pending}) + "\n")
        out.write(json.dumps({"event": "loss", "step": number, "loss": float(kw["loss"])}) + "\n")
        pending.update(rows=0, computed=0)
        return original_step(log, number, **kw)

    progress.TrainLog.step = step
    work = Path(events).with_suffix(".work")
    train_from_config(config, work_dir=str(work), deepspeed="none")


# ------------------------------------------------------------------------------------------ running


@dataclass
class Run:
    contender: str
    tool: str
    packing: bool
    result: dict | None = None
    failure: str | None = None


def peer_python(venvs: Path | None, tool: str) -> Path | None:
    if venvs is None:
        return None
    python = venvs / tool / "bin" / "python"
    return python if python.exists() else None


def launch(cmd: list[str], env: dict, log: Path, timeout: float) -> tuple[int, float, list[tuple[float, float]]]:
    """Run `cmd`, sampling the RSS of its process tree every 0.1 s; returns (exit code, launch wall time, the
    samples as (wall time, MB))."""
    start = time.time()
    trace: list[tuple[float, float]] = []
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                trace.append((time.time(), sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20))
            except psutil.Error:
                pass
            if time.time() - start > timeout:
                proc.kill()
                proc.wait()
                return -9, start, trace
            time.sleep(0.1)
    return proc.returncode, start, trace


def failure_line(log: Path, code: int) -> str:
    """The last line of the child's output that looks like the reason (an exception, an error)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if any(word in line for word in ("Error", "error", "Exception", "not supported", "No module")):
            return line[:220]
    return (lines[-1][:220] if lines else "no output") + f" (exit {code})"


def summarise(events: Path, start: float, trace: list[tuple[float, float]], warmup: int) -> dict:
    records = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    steps = [r for r in records if r["event"] == "step"]
    losses = [r["loss"] for r in records if r["event"] == "loss"]
    params = next((r for r in records if r["event"] == "params"), {})
    if not steps:
        raise ValueError("no optimizer step recorded")
    if len(steps) >= 2:
        skip = min(warmup, len(steps) - 2)
        anchor, timed = steps[skip], steps[skip + 1:]
        wall, cpu = timed[-1]["wall"] - anchor["wall"], timed[-1]["cpu"] - anchor["cpu"]
    else:  # one step: timed from the first forward (smoke sizes only)
        timed = steps
        wall = steps[0]["wall"] - params.get("wall", start)
        cpu = wall
    wall, cpu = max(wall, 1e-9), max(cpu, 1e-9)
    peak = max((mb for _, mb in trace), default=0.0)
    # What the process held when the model met its first batch (imports, weights, data), apart from what
    # training added on top (activations, gradients, optimizer state).
    first_forward = params.get("wall", steps[0]["wall"])
    before = max((mb for t, mb in trace if t <= first_forward), default=0.0)
    return {"steps": len(steps), "timed_steps": len(timed), "samples": sum(s["samples"] for s in timed),
            "real": sum(s["real"] for s in timed), "computed": sum(s["computed"] for s in timed),
            "all_real": sum(s["real"] for s in steps), "all_computed": sum(s["computed"] for s in steps),
            "all_samples": sum(s["samples"] for s in steps), "wall": wall, "cpu": cpu,
            "startup": steps[0]["wall"] - start, "to_forward": first_forward - start, "peak_rss_mb": peak,
            "rss_before_mb": before,
            "gpu_peak_mb": max((s.get("gpu_peak_mb") or 0 for s in steps), default=0) or None, "trainable": params.get("trainable"),
            "first_loss": losses[0] if losses else None,
            "last_loss": sum(losses[-3:]) / len(losses[-3:]) if losses else None, "losses": losses}


def run_one(run: Run, ws: dict, kind: str, args, venvs: Path | None) -> None:
    work = Path(args.work) / f"{kind}-{run.tool}-{'pack' if run.packing else 'pad'}-{time.time_ns()}"
    work.mkdir()
    events = work / "events.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads), "WANDB_DISABLED": "true",
           "DISABLE_VERSION_CHECK": "1", "USE_MODELSCOPE_HUB": "0", "HF_DATASETS_CACHE": str(work / "hf-datasets"),
           "MODELSCOPE_CACHE": str(work / "modelscope"), "VLFT_CACHE_DIR": str(work / "vlft-cache")}
    if not args.gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    if kind == "internvl":
        env.update(MAX_NUM=str(args.max_tiles), MIN_NUM="1")
    if args.load:
        env[FEED_ONLY] = "1"
    if run.tool == "vlft":
        config = vlft_config(work / "config.py", ws["base"], ws, kind, args, packing=run.packing)
        cmd = [sys.executable, str(HERE), "--child-vlft", str(config), "--events", str(events)]
    else:
        python = peer_python(venvs, run.tool)
        if python is None:
            run.failure = (f"no venv at {venvs / run.tool}" if venvs else
                           "peers' venvs not given (VLFT_PEERS_VENVS or --venvs)")
            return
        out = work / "out"
        if run.tool == "llamafactory":
            rest = [str(llamafactory_config(work / "config.json", ws["base"], ws, kind, args, out,
                                            packing=run.packing))]
        else:
            rest = swift_args(ws["base"], ws, kind, args, out, packing=run.packing)
        cmd = [str(python), str(PROBE), str(events), run.tool, *rest]
    code, start, trace = launch(cmd, env, work / "log.txt", args.timeout)
    if code != 0:
        run.failure = failure_line(work / "log.txt", code)
        if args.keep_logs:
            run.failure += f" [log: {work / 'log.txt'}]"
        return
    try:
        run.result = summarise(events, start, trace, args.warmup_steps)
    except (ValueError, FileNotFoundError) as error:
        run.failure = f"ran but recorded nothing usable: {error}"


def combine(tries: list[Run]) -> tuple[dict | None, str | None]:
    """One row from `--repeat` runs of a contender: rates from its fastest run and start-up its shortest (a
    shared machine only ever adds time), peak RSS its highest (memory is claimed conservatively)."""
    results = [t.result for t in tries if t.result]
    if not results:
        return None, tries[-1].failure
    best = dict(max(results, key=lambda r: r["samples"] / r["cpu"]))
    highest = max(results, key=lambda r: r["peak_rss_mb"])
    best.update(startup=min(r["startup"] for r in results), to_forward=min(r["to_forward"] for r in results),
                peak_rss_mb=highest["peak_rss_mb"], rss_before_mb=highest["rss_before_mb"], runs=len(results))
    return best, None


TOOLS = {"vlft": "vlft", "llamafactory": "LLaMA-Factory", "swift": "ms-swift"}


def print_table(kind: str, runs: list[Run], args) -> None:
    print(f"\n## {MODELS[kind].name}: {args.samples} samples, 1 epoch, micro {args.micro_batch} x accumulation "
          f"{args.accumulation}, max {args.max_tiles} tiles, {args.threads} torch thread(s), {args.workers} loader "
          f"workers, first {args.warmup_steps} steps not timed, {args.repeat} run(s) each")
    header = ("| contender | samples/CPU-s | tokens/CPU-s | samples/s | start-up s (to first forward) | "
              "peak RSS MB (before first forward + training) | trainable | efficiency | tokens seen | "
              "loss first→last | vlft ÷ |")
    print(header)
    print("|" + " --- |" * header.count(" | ") + " --- |")
    # Training: per CPU second of the trainer's process (steady on a shared machine). --load: per wall second,
    # since the loader workers do the work there and the trainer's process only waits for them.
    def rate(r: dict) -> float:
        return r["samples"] / (r["wall"] if args.load else r["cpu"])

    vlft_rate = {}
    for run in runs:
        if run.tool == "vlft" and run.result:
            vlft_rate[run.packing] = rate(run.result)
    for run in runs:
        label = f"{TOOLS[run.tool]}, {'packing' if run.packing else 'padding'}"
        if run.result is None:
            print(f"| {label} | cannot train here (below) |" + " |" * (header.count(' | ') - 1))
            continue
        r = run.result
        versus = f"{vlft_rate[run.packing] / rate(r):.2f}×" if run.packing in vlft_rate else "n/a"
        loss = (f"{r['first_loss']:.3f}→{r['last_loss']:.3f}" if r["first_loss"] is not None else "n/a")
        print(f"| {label} | {r['samples'] / r['cpu']:.2f} | {r['real'] / r['cpu']:.0f} | {r['samples'] / r['wall']:.2f} | "
              f"{r['startup']:.1f} ({r['to_forward']:.1f}) | {r['peak_rss_mb']:.0f} ({r['rss_before_mb']:.0f} + "
              f"{r['peak_rss_mb'] - r['rss_before_mb']:.0f}) | {r['trainable']:,} | "
              f"{r['all_real'] / max(1, r['all_computed']):.1%} | {r['all_real']:,} of {r['all_computed']:,} | "
              f"{loss} | {versus} |")
    for run in runs:
        if run.failure:
            print(f"- {TOOLS[run.tool]} ({'packing' if run.packing else 'padding'}) cannot train {kind} here: "
                  f"{run.failure}")
    for run in runs:
        if run.result and run.result["gpu_peak_mb"]:
            print(f"- {TOOLS[run.tool]} ({'packing' if run.packing else 'padding'}): peak GPU memory "
                  f"{run.result['gpu_peak_mb']:.0f} MiB (torch.cuda.max_memory_allocated)")
    trainable = {r.result["trainable"] for r in runs if r.result}
    if len(trainable) > 1:
        print(f"- trainable-parameter counts differ: {sorted(trainable)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="internvl", help="comma-separated: internvl, llava (default internvl)")
    parser.add_argument("--tools", default="vlft,llamafactory,swift")
    parser.add_argument("--venvs", default=os.environ.get("VLFT_PEERS_VENVS"),
                        help="folder holding the peers' venvs llamafactory/ and swift/ (default $VLFT_PEERS_VENVS)")
    parser.add_argument("--samples", type=int, help="dataset size (default 96; --load 48; --tiny 8)")
    parser.add_argument("--max-length", type=int, help="default 1024 (--load 4096)")
    parser.add_argument("--pack-length", type=int, default=None, help="vlft's data.pack_length (default max length)")
    parser.add_argument("--max-tiles", type=int, help="default 6 (--load 12)")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", choices=("on", "off"), default="on",
                        help="for every tool alike (default on: both peers' own default; vlft's is off)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--workers", type=int, help="data loader workers per run (default 0; --load 2)")
    parser.add_argument("--packing", default="off,on", help="off, on or off,on (default)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each contender, interleaved; a row shows the fastest rate, the shortest "
                             "start-up and the highest peak RSS among them (default 1)")
    parser.add_argument("--load", action="store_true", help="the image-load table (448 px tiles, up to 12)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (CI smoke test), no figures")
    parser.add_argument("--gpu", action="store_true",
                        help="on one CUDA GPU: InternVL2-2B widths, bf16, flash-attention 2 when installed")
    parser.add_argument("--keep-logs", help="keep every run's folder (logs, events) under this directory")
    parser.add_argument("--child-vlft", help=argparse.SUPPRESS)
    parser.add_argument("--events", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_vlft:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        child_vlft(args.child_vlft, args.events)
        return

    args.samples = args.samples or (8 if args.tiny else 48 if args.load else 400 if args.gpu else 96)
    args.max_length = args.max_length or (4096 if args.load or args.gpu else 1024)
    args.max_tiles = args.max_tiles or (12 if args.load else 6)
    args.workers = args.workers if args.workers is not None else (2 if args.load else 4 if args.gpu else 0)
    if args.tiny:
        args.micro_batch, args.accumulation, args.warmup_steps = 2, 1, 1
    venvs = Path(args.venvs) if args.venvs else None
    tools = [t for t in args.tools.split(",") if t]
    packings = [p == "on" for p in args.packing.split(",")]
    facts = (f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, python {sys.version.split()[0]}, "
             f"peers' venvs: {venvs or 'none'}, gradient checkpointing {args.gradient_checkpointing} for every tool")
    print(f"bench_peers: {'tiny (smoke test, no figures)' if args.tiny else 'image load' if args.load else 'training'}"
          f"; {facts}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.keep_logs) as tmp:
        args.work = tmp
        for kind in args.models.split(","):
            base = write_base(Path(tmp), kind, args)
            ws = {"base": base, **write_datasets(Path(tmp) / f"data-{kind}", args, sizes_for(args).tile_size)}
            runs = [Run(f"{tool}-{p}", tool, p) for p in packings for tool in tools]
            tries: dict[str, list[Run]] = {run.contender: [] for run in runs}
            for attempt in range(args.repeat):
                for run in runs:  # interleaved: vlft, LLaMA-Factory, ms-swift with padding, then with packing
                    once = Run(run.contender, run.tool, run.packing)
                    run_one(once, ws, kind, args, venvs)
                    tries[run.contender].append(once)
                    state = (f"{once.result['samples'] / once.result['cpu']:.2f} samples/CPU-s, start-up "
                             f"{once.result['startup']:.0f}s" if once.result else f"failed: {once.failure}")
                    print(f"# {kind} {run.contender} ({attempt + 1}/{args.repeat}): {state}", flush=True)
            for run in runs:
                run.result, run.failure = combine(tries[run.contender])
            print_table(kind, runs, args)
        if args.keep_logs:
            kept = Path(args.keep_logs) / "bench_peers-last"
            if kept.exists():
                import shutil

                shutil.rmtree(kept)
            os.rename(tmp, kept)
            os.mkdir(tmp)


if __name__ == "__main__":
    main()
