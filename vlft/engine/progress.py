"""What a user sees of training, on the terminal and in the work dir. Only the main rank writes; elsewhere
every call is silent.

    train_config.json / .py   the resolved config of this run (the .py loads back with `vlft train`)
    train.log                 plain text, timestamped: every echoed line and one line per logged step
    train_log.jsonl           one row per logged step ({"step", "loss", "lr", ...}) or eval ({"step", "eval_loss"})
    samples.jsonl             sample generations: {"step", "prompt", "image", "answer"}
    loss.png                  loss (raw + smoothed, eval) and lr against step, drawn at the end
    + what the trackers of `engine.report_to` write (tensorboard/, wandb/, swanlog/, mlruns/)

On a terminal a tqdm bar shows the current step; when stdout is a file (SLURM, nohup, `| tee`) the step
lines are printed instead, since a bar's `\\r` redraws are unreadable there.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import pprint
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from vlft.engine.trackers import Tracker, build_trackers, check_trackers

LOG_FILE = "train_log.jsonl"
TEXT_LOG = "train.log"
SAMPLES_FILE = "samples.jsonl"
# not "config.json": a work dir holding one would look like a model directory to vlft chat/merge/convert
CONFIG_JSON = "train_config.json"
CONFIG_PY = "train_config.py"
LOSS_PLOT = "loss.png"


class TrainLog:
    """Progress of one run. A resumed run keeps the log rows up to its start step and continues them."""

    def __init__(self, work_dir: Path, *, start_step: int, logging_steps: int, enabled: bool,
                 total_steps: int | None = None, run_name: str | None = None, config: dict | None = None,
                 report_to: Sequence[str] = ("tensorboard",), progress_bar: bool | None = None):
        """Open the work dir's logs; with `config`, write it there at once.

        Args:
            start_step: the step a resumed run continues from (0: a fresh run); rows after it are dropped.
            total_steps: the run's length, for the bar and the ETA; if not known yet, call `start` later.
            run_name: the plot's title and the trackers' run name; default the work dir's name.
            config: the resolved config record (`spec_to_dict`), written as train_config.json/.py.
            report_to: trackers to feed (vlft.engine.trackers.TRACKERS).
            progress_bar: a tqdm bar (True) or printed step lines (False); default: a bar on a terminal.
        """
        self.work_dir = Path(work_dir)
        self.enabled = enabled
        self.logging_steps = max(1, logging_steps)
        self.run_name = run_name or self.work_dir.resolve().name
        self.path = self.work_dir / LOG_FILE
        self.text_path = self.work_dir / TEXT_LOG
        self.samples_path = self.work_dir / SAMPLES_FILE
        self.start_step = start_step
        self.total_steps: int | None = None
        self._window: list[dict] = []
        self._bar = None
        self._trackers: list[Tracker] = []
        self._last_loss: float | None = None
        self._tokens_seen = self._samples_seen = 0
        self._clock: tuple[float, int] | None = None      # (time, step) when the steps started, for the ETA
        self._closed = False
        self._plot: Path | None = None
        if not enabled:
            return
        self._show_bar = (sys.stdout.isatty() and sys.stderr.isatty()) if progress_bar is None else progress_bar
        check_trackers(report_to)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            _write_atomic(self.work_dir / CONFIG_JSON, json.dumps(config, indent=2) + "\n")
            _write_atomic(self.work_dir / CONFIG_PY, format_config_py(config))
        kept = [row for row in read_log(self.path) if row["step"] <= start_step]
        _write_atomic(self.path, "".join(json.dumps(row) + "\n" for row in kept))
        self._drop_samples_after(start_step)
        train_rows = [row for row in kept if "loss" in row]
        if train_rows:
            self._last_loss = train_rows[-1]["loss"]
            self._tokens_seen = train_rows[-1].get("tokens_seen", 0)
            self._samples_seen = train_rows[-1].get("samples_seen", 0)
        self._write_text(f"--- resumed at step {start_step} ---" if start_step else
                         f"--- {self.run_name}: training in {self.work_dir} ---")
        self._trackers = build_trackers(list(report_to), run_name=self.run_name, work_dir=self.work_dir,
                                        config=config, start_step=start_step)
        for tracker in self._trackers:
            if tracker.note:
                self.echo(tracker.note)
        if total_steps is not None:
            self.start(total_steps)

    def start(self, total_steps: int) -> None:
        """The steps begin: the run's length is known (bar and ETA from here)."""
        if not self.enabled:
            return
        self.total_steps = total_steps
        self._clock = (time.monotonic(), self.start_step)
        if self._show_bar and self._bar is None:
            self._bar = tqdm(total=total_steps, initial=self.start_step, desc="train", unit="step", dynamic_ncols=True,
                             mininterval=0.5)

    def echo(self, text: str) -> None:
        """Print a line (without breaking the bar) and keep it in train.log."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)
        self._write_text(text)

    def step(self, step: int, *, epoch: float, loss: float, lrs: dict[str, float], grad_norm: float | None,
             tokens: int, samples: int, seconds: float, metrics: dict[str, float] | None = None) -> None:
        """Record one optimizer step; every `logging_steps` steps and at the last one, one JSONL row and
        one text line (means over the steps since the previous row). `metrics`: a preference objective's
        (reward accuracy, margins, rewards, log-probs, loss terms), logged as train/<name>."""
        if not self.enabled:
            return
        self._tokens_seen += tokens
        self._samples_seen += samples
        self._window.append(dict(loss=loss, tokens=tokens, samples=samples, seconds=seconds, grad_norm=grad_norm,
                                 metrics=metrics or {}))
        lr = next(iter(lrs.values()), 0.0)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens / max(seconds, 1e-9):.0f}",
                                  refresh=False)
            self._bar.update(1)
        if step % self.logging_steps and step != self.total_steps:
            return
        window, self._window = self._window, []
        elapsed = max(sum(w["seconds"] for w in window), 1e-9)
        norms = [w["grad_norm"] for w in window if w["grad_norm"] is not None]
        row = {"step": step, "epoch": round(epoch, 4), "loss": sum(w["loss"] for w in window) / len(window),
               "lr": lr, "lrs": lrs, "grad_norm": norms[-1] if norms else None,
               "tokens_per_s": sum(w["tokens"] for w in window) / elapsed,
               "samples_per_s": sum(w["samples"] for w in window) / elapsed,
               "step_time": elapsed / len(window), "tokens_seen": self._tokens_seen,
               "samples_seen": self._samples_seen, "time": time.time()}
        metric_keys = window[-1]["metrics"]
        if metric_keys:
            row["metrics"] = {key: sum(w["metrics"].get(key, 0.0) for w in window) / len(window)
                              for key in metric_keys}
        self._last_loss = row["loss"]
        self._append(self.path, row)
        line = format_step_line(row, total_steps=self.total_steps, eta=self._eta(step))
        if self._bar is None:
            print(line, flush=True)
        self._write_text(line)
        scalars = {f"train/{key}": row[key] for key in ("loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s",
                                                         "epoch", "tokens_seen", "samples_seen", "step_time")
                   if row[key] is not None}
        scalars.update({f"train/lr/{part}": value for part, value in lrs.items()})
        scalars.update({f"train/{key}": value for key, value in row.get("metrics", {}).items()})
        self._track(step, scalars)

    def eval(self, step: int, loss: float, *, samples: int | None = None,
             metrics: dict[str, float] | None = None) -> None:
        """Record a validation loss (mean over `samples` held-out samples) at `step`, and a preference
        objective's metrics (eval/<name>)."""
        if not self.enabled:
            return
        row = {"step": step, "eval_loss": loss, "eval_samples": samples, "time": time.time()}
        if metrics:
            row["eval_metrics"] = metrics
        self._append(self.path, row)
        of_total = f"/{self.total_steps}" if self.total_steps else ""
        accuracy = next((v for k, v in (metrics or {}).items() if "accurac" in k), None)
        self.echo(f"eval step {step}{of_total} | eval_loss {loss:.4f}" +
                  (f" | reward accuracy {accuracy:.1%}" if accuracy is not None else "") +
                  (f" | {samples} samples" if samples is not None else ""))
        self._track(step, {"eval/loss": loss, **{f"eval/{key}": value for key, value in (metrics or {}).items()}})

    def samples(self, step: int, answers: Sequence[tuple[str, str]], *,
                images: Sequence[str | None] = ()) -> None:
        """Record sample generations: (prompt, answer) pairs, with the prompts' images in the same order."""
        if not self.enabled:
            return
        answers = list(answers)
        images = list(images) + [None] * (len(answers) - len(images))
        rows = [{"step": step, "prompt": prompt, "image": image, "answer": answer}
                for (prompt, answer), image in zip(answers, images)]
        for row in rows:
            self._append(self.samples_path, row)
            self.echo(f"[sample @ step {step}] {row['prompt']!r} -> {row['answer']!r}")
        for tracker in self._trackers:
            tracker.samples(step, rows)

    def final_loss(self) -> float:
        """The last logged train loss (a window mean, as the log holds it); on a resumed run that had no
        steps left, the one its log ended with. NaN when nothing was logged."""
        return math.nan if self._last_loss is None else self._last_loss

    def close(self) -> Path | None:
        """Close the bar and the trackers; draw the loss curve of the whole log. Returns the PNG."""
        if not self.enabled or self._closed:
            return self._plot
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        try:
            for tracker in self._trackers:
                tracker.close()
        finally:
            self._plot = plot_loss(read_log(self.path), self.work_dir / LOSS_PLOT, title=self.run_name)
        return self._plot

    def _drop_samples_after(self, step: int) -> None:
        """Samples of the steps this run redoes leave samples.jsonl, kept whole as samples.<time>.jsonl
        (as checkpoints.set_aside_log keeps train_log.jsonl): nothing a run wrote is deleted."""
        rows = read_log(self.samples_path)
        kept = [row for row in rows if row["step"] <= step]
        if len(kept) == len(rows):
            return
        os.replace(self.samples_path, self.samples_path.with_name(f"samples.{time.strftime('%Y%m%d-%H%M%S')}.jsonl"))
        _write_atomic(self.samples_path, "".join(json.dumps(row) + "\n" for row in kept))

    def _eta(self, step: int) -> float | None:
        if self._clock is None or not self.total_steps:
            return None
        started, first = self._clock
        done = step - first
        return (self.total_steps - step) * (time.monotonic() - started) / done if done > 0 else None

    def _track(self, step: int, scalars: dict[str, float]) -> None:
        for tracker in self._trackers:
            tracker.log(step, scalars)

    def _write_text(self, text: str) -> None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        with self.text_path.open("a") as f:       # opened per line: flushed, and safe to tail or to crash
            f.write("".join(f"{stamp} {line}\n" for line in str(text).splitlines() or [""]))

    @staticmethod
    def _append(path: Path, row: dict) -> None:
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def format_step_line(row: dict, *, total_steps: int | None, eta: float | None) -> str:
    """`step 5/60 | epoch 0.08 | loss 1.2345 | lr 2.00e-03 | grad_norm 0.8 | 1234 tok/s | eta 0:01:02`."""
    lrs = row.get("lrs") or {}
    if len(set(lrs.values())) > 1:      # parts trained at different rates: name each
        lr = "lr " + " ".join(f"{part}={value:.2e}" for part, value in lrs.items())
    else:
        lr = f"lr {row['lr']:.2e}"
    parts = [f"step {row['step']}" + (f"/{total_steps}" if total_steps else ""), f"epoch {row['epoch']:.2f}",
             f"loss {row['loss']:.4f}", lr]
    metrics = row.get("metrics") or {}
    accuracy = next((v for k, v in metrics.items() if "accurac" in k), None)
    margin = next((v for k, v in metrics.items() if "margin" in k), None)
    if accuracy is not None:   # a preference objective's
        parts.append(f"reward acc {accuracy:.0%}" + (f" margin {margin:.3g}" if margin is not None else ""))
    if row.get("grad_norm") is not None:
        parts.append(f"grad_norm {row['grad_norm']:.4g}")
    parts.append(f"{row['tokens_per_s']:.0f} tok/s")
    if eta is not None:
        parts.append(f"eta {datetime.timedelta(seconds=round(eta))}")
    return " | ".join(parts)


def format_config_py(config: dict) -> str:
    """A resolved config record as a Python config file: one `section = {...}` per section, which
    `vlft train` (mmengine's Config) loads back as it is."""
    body = "\n\n".join(f"{key} = {pprint.pformat(value, sort_dicts=False, width=110)}"
                       for key, value in config.items())
    return ("# The resolved config of this run, written by `vlft train` (paths absolute, defaults filled in).\n"
            "# The same run again: vlft train <this file> --work-dir <a new dir>\n\n" + body + "\n")


def read_log(path: Path) -> list[dict]:
    """The rows of a JSONL log: train rows have "loss", eval rows "eval_loss"; both have "step"."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


@dataclass(frozen=True)
class LossAxis:
    """How the loss axis is drawn: log scale when every loss is positive (early losses stay on the plot
    without squashing the rest), else linear with the top clipped to a high percentile."""

    scale: str                                   # "log" | "linear"
    limits: tuple[float, float] | None = None    # the linear axis' clipped range


def loss_axis(values: Sequence[float], *, percentile: float = 95.0) -> LossAxis:
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite or finite[0] > 0:
        return LossAxis("log")
    low = finite[0]
    high = finite[min(len(finite) - 1, math.ceil(percentile / 100 * (len(finite) - 1)))]
    pad = 0.05 * (high - low) or 0.5
    return LossAxis("linear", (low - pad, high + pad))


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average, debiased at the start (TensorBoard's smoothing)."""
    out, average, norm = [], 0.0, 0.0
    for value in values:
        average = weight * average + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(average / norm)
    return out


def smoothing_weight(points: int) -> float:
    """More smoothing the more points: none below 10, 0.5 at 20, at most 0.8 (more lags a falling curve)."""
    return min(0.8, max(0.0, 1 - 10 / points)) if points else 0.0


def plot_loss(rows: list[dict], out: Path, *, title: str | None = None) -> Path | None:
    """Train loss (raw points faint, smoothed line), eval loss and learning rate against step, drawn
    off-screen (no pyplot, no display)."""
    # imported here: matplotlib costs a training process ~25 MB of RSS from its start, for a plot drawn at the end
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter

    train = [r for r in rows if "loss" in r and r["loss"] is not None and math.isfinite(r["loss"])]
    evals = [r for r in rows if "eval_loss" in r and r["eval_loss"] is not None and math.isfinite(r["eval_loss"])]
    if not train and not evals:
        return None
    preference = [r for r in train if r.get("metrics")]
    figure = Figure(figsize=(8, 7 if preference else 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot(2, 1, 1) if preference else figure.add_subplot()
    if preference:
        _plot_rewards(figure.add_subplot(2, 1, 2), preference, evals)
    steps, losses = [r["step"] for r in train], [r["loss"] for r in train]
    if train:
        axis.plot(steps, losses, color="tab:blue", alpha=0.25, linestyle="none", marker=".", label="train loss")
        axis.plot(steps, smooth(losses, smoothing_weight(len(losses))), color="tab:blue", linewidth=1.8,
                  label="train loss (smoothed)")
    if evals:
        axis.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], color="tab:red", marker="o",
                  markersize=4, label="eval loss")
    shape = loss_axis(losses + [r["eval_loss"] for r in evals])
    axis.set_yscale(shape.scale)
    if shape.scale == "log":     # plain numbers (0.6, 2, 3), not 6x10^-1
        axis.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        axis.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    if shape.limits:
        axis.set_ylim(*shape.limits)
    axis.set_xlabel("step")
    axis.set_ylabel("loss (log scale)" if shape.scale == "log" else "loss (top clipped)")
    axis.grid(alpha=0.3, which="both")
    if train:
        lr_axis = axis.twinx()
        lr_axis.plot(steps, [r.get("lr", 0.0) for r in train], color="tab:orange", alpha=0.6, linestyle="--",
                     label="learning rate")
        lr_axis.set_ylabel("learning rate", color="tab:orange")
        lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        lines = axis.get_legend_handles_labels()[0] + lr_axis.get_legend_handles_labels()[0]
    else:
        lines = axis.get_legend_handles_labels()[0]
    axis.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize="small")
    summary = []
    if train:
        summary.append(f"train loss {losses[-1]:.4f} at step {steps[-1]}")
    if evals:
        summary.append(f"eval loss {evals[-1]['eval_loss']:.4f} at step {evals[-1]['step']}")
    axis.set_title(f"{title}\n{', '.join(summary)}" if title else ", ".join(summary), fontsize="medium")
    figure.tight_layout()
    figure.savefig(out)
    return Path(out)


def _plot_rewards(axis, rows: list[dict], evals: list[dict]) -> None:
    """A preference objective's panel: reward accuracy (train, eval) and the mean reward margin per step."""
    steps = [r["step"] for r in rows]
    for part, colour in (("accurac", "tab:green"), ("margin", "tab:purple")):
        key = next((k for k in rows[-1]["metrics"] if part in k), None)
        if key is None:
            continue
        target = axis if part == "accurac" else axis.twinx()
        target.plot(steps, [r["metrics"].get(key, math.nan) for r in rows], color=colour, label=f"train {key}")
        held = [r for r in evals if key in (r.get("eval_metrics") or {})]
        if held:
            target.plot([r["step"] for r in held], [r["eval_metrics"][key] for r in held], color=colour,
                        marker="o", linestyle="--", label=f"eval {key}")
        target.set_ylabel(key, color=colour)
        target.legend(loc="lower right" if part == "accurac" else "upper left", fontsize="small")
    axis.set_xlabel("step")
    axis.grid(alpha=0.3)


def _write_atomic(path: Path, text: str) -> None:
    """Replace a file in one step: a crash leaves the old content or the new, never half of either."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
