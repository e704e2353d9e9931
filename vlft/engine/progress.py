"""What a user sees of training: a tqdm bar (step, loss, lr, tokens/s, ETA), a JSONL log of every logged
step, TensorBoard events, and `loss.png` at the end. Only the main rank writes; elsewhere it is silent."""
from __future__ import annotations

import json
import time
from pathlib import Path

LOG_FILE = "train_log.jsonl"
TENSORBOARD_DIR = "tensorboard"
LOSS_PLOT = "loss.png"


class TrainLog:
    """Progress of one run. A resumed run keeps the log rows up to its start step and continues them."""

    def __init__(self, work_dir: Path, *, total_steps: int, start_step: int, logging_steps: int, enabled: bool):
        self.work_dir = Path(work_dir)
        self.enabled = enabled
        self.logging_steps = max(1, logging_steps)
        self.path = self.work_dir / LOG_FILE
        self._window: list[dict] = []
        self._bar = self._tensorboard = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        self.work_dir.mkdir(parents=True, exist_ok=True)
        kept = [row for row in read_log(self.path) if row["step"] <= start_step]
        self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        self._tensorboard = SummaryWriter(str(self.work_dir / TENSORBOARD_DIR), purge_step=start_step + 1)
        self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                         mininterval=0.5)

    def echo(self, text: str) -> None:
        """Print a line without breaking the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def step(self, step: int, *, epoch: float, loss: float, lrs: dict[str, float], grad_norm: float | None,
             tokens: int, samples: int, seconds: float) -> None:
        """Record one optimizer step; every `logging_steps` steps, one JSONL row (means over the window)."""
        if not self.enabled:
            return
        self._window.append(dict(loss=loss, tokens=tokens, samples=samples, seconds=seconds, grad_norm=grad_norm))
        lr = next(iter(lrs.values()), 0.0)
        self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens / max(seconds, 1e-9):.0f}",
                              refresh=False)
        self._bar.update(1)
        if step % self.logging_steps:
            return
        window, self._window = self._window, []
        elapsed = max(sum(w["seconds"] for w in window), 1e-9)
        norms = [w["grad_norm"] for w in window if w["grad_norm"] is not None]
        row = {"step": step, "epoch": round(epoch, 4), "loss": sum(w["loss"] for w in window) / len(window),
               "lr": lr, "lrs": lrs, "grad_norm": norms[-1] if norms else None,
               "tokens_per_s": sum(w["tokens"] for w in window) / elapsed,
               "samples_per_s": sum(w["samples"] for w in window) / elapsed, "time": time.time()}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for key in ("loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s"):
            if row[key] is not None:
                self._tensorboard.add_scalar(f"train/{key}", row[key], step)

    def close(self) -> Path | None:
        """Close the bar and the event file; draw the loss curve of the whole log. Returns the PNG."""
        if not self.enabled:
            return None
        self._bar.close()
        self._tensorboard.close()
        return plot_loss(read_log(self.path), self.work_dir / LOSS_PLOT)


def read_log(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    return rows


def plot_loss(rows: list[dict], out: Path) -> Path | None:
    """Loss (and learning rate) against step, drawn off-screen (no pyplot, no display)."""
    if not rows:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [r["step"] for r in rows]
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    axis.plot(steps, [r["loss"] for r in rows], color="tab:blue", marker="." if len(rows) < 50 else None)
    axis.set_xlabel("step")
    axis.set_ylabel("training loss", color="tab:blue")
    lr_axis = axis.twinx()
    lr_axis.plot(steps, [r["lr"] for r in rows], color="tab:orange", alpha=0.6)
    lr_axis.set_ylabel("learning rate", color="tab:orange")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out)
    return Path(out)
