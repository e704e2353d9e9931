"""Experiment trackers named by `engine.report_to`: TensorBoard (always installed) and, as extras, wandb,
SwanLab and MLflow through their own libraries. Each library is imported only when asked for.

Without credentials or a mode set by the user, the online trackers run offline into the work dir (a run
that starts on a cluster node without network must not hang or fail); the library's own environment
variables (WANDB_MODE, WANDB_DIR, WANDB_PROJECT, SWANLAB_MODE, MLFLOW_TRACKING_URI, ...) always win,
because an argument passed to their init would override them.
"""
from __future__ import annotations

import importlib
import json
import netrc
import os
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

from vlft.errors import ConfigError

#: What `engine.report_to` accepts.
TRACKERS = ("tensorboard", "wandb", "swanlab", "mlflow")
TENSORBOARD_DIR = "tensorboard"
#: The project a run joins when the tracker's own environment variable names none.
DEFAULT_PROJECT = "vlft"


class Tracker:
    """One tracker: scalars per step, sample generations now and then, closed once at the end."""

    name = "tracker"
    #: One line for the user when the tracker runs offline: where its files go and how to go online.
    note: str | None = None

    def log(self, step: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def samples(self, step: int, rows: list[dict]) -> None:
        """Sample generations ({"prompt", "image", "answer"}); trackers without a text view ignore them."""

    def close(self) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, work_dir: Path, *, start_step: int):
        from torch.utils.tensorboard import SummaryWriter   # only a run that reports to TensorBoard pays for it

        # purge_step drops the events of steps a resumed run is about to redo
        self.writer = SummaryWriter(str(Path(work_dir) / TENSORBOARD_DIR), purge_step=start_step + 1)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def samples(self, step: int, rows: list[dict]) -> None:
        table = "| prompt | image | answer |\n|---|---|---|\n" + "".join(
            f"| {_cell(r['prompt'])} | {_cell(r['image'] or '')} | {_cell(r['answer'])} |\n" for r in rows)
        self.writer.add_text("samples", table, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, wandb, *, run_name: str, work_dir: Path, config: dict | None, resuming: bool):
        self.wandb = wandb
        kwargs: dict[str, Any] = {"config": config}
        if "WANDB_NAME" not in os.environ:
            kwargs["name"] = run_name
        if "WANDB_PROJECT" not in os.environ:
            kwargs["project"] = DEFAULT_PROJECT
        if "WANDB_DIR" not in os.environ:
            kwargs["dir"] = str(work_dir)
        self.offline = "WANDB_MODE" not in os.environ and not _wandb_logged_in()
        if self.offline:
            kwargs["mode"] = "offline"
            where = Path(os.environ.get("WANDB_DIR", work_dir)) / "wandb"
            self.note = (f"wandb: offline run in {where} (no WANDB_MODE, no login); upload it with "
                         "`wandb sync`, or set WANDB_MODE=online")
        # a resumed run continues the same wandb run: its id is kept in the work dir
        id_file = Path(work_dir) / "wandb_run_id"
        if resuming and id_file.is_file():
            kwargs.update(id=id_file.read_text().strip(), resume="allow")
        self.run = wandb.init(**kwargs)
        run_id = getattr(self.run, "id", None)
        if run_id:
            id_file.write_text(f"{run_id}\n")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def samples(self, step: int, rows: list[dict]) -> None:
        table = self.wandb.Table(columns=["prompt", "image", "answer"],
                                 data=[[r["prompt"], r["image"] or "", r["answer"]] for r in rows])
        self.run.log({"samples": table}, step=step)

    def close(self) -> None:
        self.run.finish()


class SwanLabTracker(Tracker):
    name = "swanlab"

    def __init__(self, swanlab, *, run_name: str, work_dir: Path, config: dict | None):
        self.swanlab = swanlab
        kwargs: dict[str, Any] = {"config": config}
        if "SWANLAB_EXP_NAME" not in os.environ:
            kwargs["experiment_name"] = run_name
        if not {"SWANLAB_LOGDIR", "SWANLAB_LOG_DIR"} & set(os.environ):
            kwargs["logdir"] = str(Path(work_dir) / "swanlog")
        if "SWANLAB_PROJ_NAME" not in os.environ:
            kwargs["project"] = DEFAULT_PROJECT
        self.offline = "SWANLAB_MODE" not in os.environ and not _swanlab_logged_in()
        if self.offline:
            kwargs["mode"] = "offline"
            where = kwargs.get("logdir") or os.environ.get("SWANLAB_LOGDIR") or os.environ.get("SWANLAB_LOG_DIR")
            self.note = (f"swanlab: offline run in {where} (no SWANLAB_MODE, no login); upload it with "
                         "`swanlab sync`, or set SWANLAB_MODE=cloud")
        self.run = swanlab.init(**kwargs)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.swanlab.log(scalars, step=step)

    def close(self) -> None:
        self.swanlab.finish()


class MLflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, mlflow, *, run_name: str, work_dir: Path, config: dict | None):
        self.mlflow = mlflow
        # offline by default: a file store inside the work dir (`mlflow ui --backend-store-uri <it>`)
        self.offline = "MLFLOW_TRACKING_URI" not in os.environ
        if self.offline:
            store = (Path(work_dir).resolve() / "mlruns").as_uri()
            mlflow.set_tracking_uri(store)
            self.note = f"mlflow: runs in {store} (no MLFLOW_TRACKING_URI); `mlflow ui --backend-store-uri {store}`"
        if "MLFLOW_EXPERIMENT_NAME" not in os.environ and "MLFLOW_EXPERIMENT_ID" not in os.environ:
            mlflow.set_experiment(DEFAULT_PROJECT)
        self.run = mlflow.start_run(run_name=run_name)
        if config is not None:
            # the whole nested config as one artifact: params are flat and length-limited
            mlflow.log_dict(config, "config.json")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.mlflow.log_metrics(scalars, step=step)

    def samples(self, step: int, rows: list[dict]) -> None:
        self.mlflow.log_text("".join(json.dumps(r) + "\n" for r in rows), f"samples/step_{step}.jsonl")

    def close(self) -> None:
        self.mlflow.end_run()


def build_trackers(names: Sequence[str], *, run_name: str, work_dir: Path, config: dict | None,
                   start_step: int = 0) -> list[Tracker]:
    """The trackers `engine.report_to` names, started. A name not in TRACKERS, or a library that is not
    installed, is a ConfigError naming the key and the install line.

    Args:
        run_name: the run's name in each tracker (the work dir's name).
        config: the resolved config record, stored with the run.
        start_step: the step a resumed run continues from (0 for a fresh run).
    """
    check_trackers(names)     # every library first, so a missing one leaves nothing half-started
    work_dir = Path(work_dir)
    builders: dict[str, Callable[[], Tracker]] = {
        "tensorboard": lambda: TensorBoardTracker(work_dir, start_step=start_step),
        "wandb": lambda: WandbTracker(_library("wandb"), run_name=run_name, work_dir=work_dir, config=config,
                                      resuming=start_step > 0),
        "swanlab": lambda: SwanLabTracker(_library("swanlab"), run_name=run_name, work_dir=work_dir, config=config),
        "mlflow": lambda: MLflowTracker(_library("mlflow"), run_name=run_name, work_dir=work_dir, config=config),
    }
    work_dir.mkdir(parents=True, exist_ok=True)
    return [builders[name]() for name in dict.fromkeys(names)]


def check_trackers(names: Sequence[str]) -> None:
    """Refuse, before anything is written, a name not in TRACKERS or a tracker whose library is missing."""
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"engine.report_to: unknown tracker {unknown[0]!r}; choose from {', '.join(TRACKERS)}")
    for name in dict.fromkeys(names):
        if name != "tensorboard":
            _library(name)


def _library(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(f"engine.report_to: {name} is not installed; pip install 'vlft[{name}]'") from None


def _wandb_logged_in() -> bool:
    """An API key in the environment or from `wandb login` (which writes it to ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _swanlab_logged_in() -> bool:
    """An API key in the environment or from `swanlab login` (kept under SWANLAB_ROOT, formerly
    SWANLAB_SAVE_DIR, default ~/.swanlab)."""
    if os.environ.get("SWANLAB_API_KEY"):
        return True
    root = os.environ.get("SWANLAB_ROOT") or os.environ.get("SWANLAB_SAVE_DIR") or "~/.swanlab"
    return (Path(root).expanduser() / ".netrc").is_file()


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
