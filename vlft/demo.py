"""`vlft demo`: the whole journey on a tiny local model, on a CPU, in minutes, with nothing downloaded.

    base model -> dataset -> check-data -> train (LoRA, ZeRO-2) -> merge -> convert to hf (verified)
    -> evaluate the base and the converted model on held-out images -> before/after table + loss plot

The base is a tiny random-init InternVL (transformers-native layout). The dataset is procedurally drawn
"dishes" (vlft.demo_data): every question offers the same options, so only the image tells the answer.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from vlft.errors import ConfigError, DataError
from vlft.tiny.checkpoints import TinySizes

#: Written into the work dir so a rerun may clear what an earlier demo wrote (and nothing else).
DEMO_MARKER = ".vlft-demo"
DEMO_PARTS = ("base", "data", "train", "merged", "hf", "predictions.jsonl")


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and schedule of the demo; tests shorten it (fewer images and steps)."""

    n_train: int = 800
    n_test: int = 48
    n_dishes: int = 4
    steps: int = 300
    lr: float = 2e-3
    micro_batch_size: int = 4
    lora_r: int = 16
    #: text hidden 128 (wide enough to learn); one 56-px tile per image -> 4 image tokens.
    sizes: TinySizes = field(default_factory=lambda: TinySizes(vision_hidden=64, vision_layers=2, tile_size=56,
                                                               text_hidden=128, text_layers=2, text_heads=4,
                                                               text_kv_heads=2))
    #: A random-init head (std 0.02) caps every logit near 0.02 * hidden after the final norm, so no
    #: LoRA update can make the model confident; a real base has a trained head. Scaled to std ~0.2.
    lm_head_scale: float = 10.0
    eval_batch_size: int = 16
    seed: int = 0


@dataclass
class DemoResult:
    work_dir: Path
    checkpoint: Path
    merged: Path
    converted: Path
    loss_plot: Path | None
    before: object          # vlft.infer.evaluate.EvalReport of the base
    after: object           # ... of the converted model
    table: str
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def chance(self) -> float:
        return 1 / len(self.after.predictions[0].item.choices)


def demo_config() -> Path:
    from vlft.shipped import CONFIG_DIR

    path = CONFIG_DIR / "tiny_demo.py"
    if not path.is_file():
        raise ConfigError(f"{path}: the demo's config is missing from this installation")
    return path


def make_demo_base(out: Path, plan: DemoPlan) -> Path:
    """The tiny InternVL base (random init), its LM head scaled so LoRA can move the logits far enough."""
    from safetensors.torch import load_file, save_file

    from vlft.tiny.checkpoints import make_tiny_internvl_hf

    make_tiny_internvl_hf(out, sizes=plan.sizes, seed=plan.seed)
    weights = out / "model.safetensors"
    state = load_file(str(weights))
    head = "language_model.lm_head.weight"
    if head not in state:
        raise RuntimeError(f"{weights}: no {head}; the tiny checkpoint layout changed")
    state[head] = state[head] * plan.lm_head_scale
    save_file(state, str(weights), metadata={"format": "pt"})
    return out


def prepare_work_dir(work_dir: Path) -> None:
    """Create the work dir, or clear an earlier demo's outputs in it; refuse a folder the demo did not make."""
    if work_dir.exists() and any(work_dir.iterdir()):
        if not (work_dir / DEMO_MARKER).is_file():
            raise ConfigError(f"{work_dir}: exists, is not empty and was not written by `vlft demo`; "
                              "choose another --work-dir")
        for name in DEMO_PARTS:
            part = work_dir / name
            if part.is_dir():
                shutil.rmtree(part)
            elif part.exists():
                part.unlink()
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / DEMO_MARKER).write_text("written by `vlft demo`; a rerun replaces this folder's outputs\n")


def run_demo(work_dir: str | Path = "vlft-demo", *, steps: int | None = None, plan: DemoPlan = DemoPlan(),
             echo=None) -> DemoResult:
    """Run every stage, print the before/after table and where everything went; returns what it made."""
    import click

    from vlft.engine.check_data import check_data_from_config
    from vlft.demo_data import write_dish_dataset
    from vlft.engine.train import train_from_config
    from vlft.export.convert import convert_checkpoint
    from vlft.export.merge import merge_checkpoint
    from vlft.infer.evaluate import evaluate_model, format_table, read_eval_file, write_predictions
    from vlft.infer.loading import load_for_inference

    echo = echo or click.echo
    steps = plan.steps if steps is None else steps
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    work = Path(work_dir).resolve()
    prepare_work_dir(work)
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    def stage(n: int, text: str):
        echo(f"\n[{n}/7] {text}")
        return time.perf_counter()

    t = stage(1, f"tiny InternVL base model -> {work / 'base'}")
    base = make_demo_base(work / "base", plan)
    seconds["base"] = time.perf_counter() - t

    t = stage(2, f"dataset: {plan.n_dishes} procedurally drawn dishes, {plan.n_train} train / {plan.n_test} test "
                 f"images -> {work / 'data'}")
    paths = write_dish_dataset(work / "data", n_train=plan.n_train, n_test=plan.n_test, n_dishes=plan.n_dishes,
                               image_size=plan.sizes.tile_size, seed=plan.seed)
    seconds["data"] = time.perf_counter() - t

    config = demo_config()
    options = [f"model.path={base}",
               f"data.datasets=[{{'path': {str(paths['train'])!r}, 'image_root': {str(work / 'data')!r}}}]",
               f"model.llm.lora.r={plan.lora_r}", f"model.llm.lora.alpha={2 * plan.lora_r}",
               f"schedule.max_steps={steps}", f"schedule.lr={plan.lr}",
               f"schedule.micro_batch_size={plan.micro_batch_size}", f"schedule.seed={plan.seed}",
               f"engine.save_steps={steps}", f"engine.logging_steps={max(1, steps // 30)}"]
    shown = " ".join(f"--cfg-options {o}" if " " not in o else f"--cfg-options \"{o}\"" for o in options)
    echo(f"config: {config} {shown}")

    t = stage(3, "check-data")
    if check_data_from_config(config, cfg_options=options) != 0:
        raise DataError(f"{paths['train']}: check-data found problems in the generated dataset (see above)")
    seconds["check-data"] = time.perf_counter() - t

    t = stage(4, f"train: LoRA r={plan.lora_r} on the LLM + the connector, DeepSpeed ZeRO-2, {steps} steps")
    result = train_from_config(config, work_dir=str(work / "train"), deepspeed="zero2", cfg_options=options)
    if result.checkpoint is None:
        raise RuntimeError("training wrote no checkpoint")
    seconds["train"] = time.perf_counter() - t

    t = stage(5, f"merge -> {work / 'merged'}")
    merged = Path(merge_checkpoint(result.checkpoint, work / "merged", dtype="fp32"))
    seconds["merge"] = time.perf_counter() - t

    t = stage(6, f"convert to transformers-native InternVL (hf), verified -> {work / 'hf'}")
    converted = Path(convert_checkpoint(merged, work / "hf", target="hf", verify=True, dtype="fp32", log=echo))
    seconds["convert"] = time.perf_counter() - t

    t = stage(7, f"evaluate the base and the converted model on {plan.n_test} held-out images")
    items = read_eval_file(paths["test"])
    reports = []
    for name, path in (("base", base), ("hf", converted)):
        model, pipeline = load_for_inference(path)
        reports.append(evaluate_model(model, pipeline, items, name=str(path), batch_size=plan.eval_batch_size,
                                      max_new_tokens=8))
        del model
    predictions = write_predictions(work / "predictions.jsonl", reports)
    seconds["eval"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - start

    table = format_table(reports, title=f"accuracy on {paths['test']}")
    echo("\n" + table)
    echo(f"\nloss curve:   {result.loss_plot}")
    echo(f"predictions:  {predictions}")
    echo(f"time:         {seconds['total']:.0f} s (" + ", ".join(
        f"{k} {v:.0f} s" for k, v in seconds.items() if k != "total") + ")")
    prompt = items[0].question.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    echo(f"try it:       vlft chat {converted} --image {items[0].sample.images[0]} --prompt $'{prompt}'")
    return DemoResult(work, Path(result.checkpoint), merged, converted, result.loss_plot, reports[0], reports[1],
                      table, seconds)

