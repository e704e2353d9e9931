"""The work directory's checkpoints: atomic saves, `latest`, pruning, the resume point, whose dir it is.

    work_dir/
      checkpoint-<step>/       complete: renamed into place only after everything inside was written,
                               and holds vlft_checkpoint.json (the model-state marker, written last)
                               and trainer_state.json (step, epoch, position in the epoch)
      checkpoint-<step>.tmp/   being written (or left by a crash): never resumed from, removed by the next save
      latest                   the name of the newest complete checkpoint
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vlft.engine.distributed import barrier
from vlft.errors import CheckpointError, ConfigError
from vlft.model.layouts import CHECKPOINT_MARKER

LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
TMP_SUFFIX = ".tmp"
_NAME = re.compile(r"^checkpoint-(\d+)$")
#: Settings that may change between runs of the same experiment (how it runs, not what it learns).
_RUNTIME_KEYS = {"model": ("gradient_checkpointing", "attn_implementation"), "data": ("num_workers",)}


@dataclass
class TrainerState:
    """Where training stands after `step` optimizer steps: the next micro-batch is `batch` of `epoch`."""

    step: int
    epoch: int
    batch: int
    world_size: int

    def save(self, ckpt_dir: Path) -> None:
        (ckpt_dir / TRAINER_STATE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, ckpt_dir: Path) -> "TrainerState":
        try:
            return cls(**json.loads((Path(ckpt_dir) / TRAINER_STATE).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{ckpt_dir}: no usable {TRAINER_STATE} ({exc}); it cannot be resumed") from None


def checkpoint_step(path: Path) -> int | None:
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    """A finished checkpoint: final name (no .tmp), the marker written last, and the trainer state."""
    path = Path(path)
    return (checkpoint_step(path) is not None and (path / CHECKPOINT_MARKER).is_file()
            and (path / TRAINER_STATE).is_file())


def complete_checkpoints(work_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest step first."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    found = [p for p in work_dir.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=checkpoint_step)


def find_resume_checkpoint(work_dir: Path) -> Path | None:
    """What `--resume auto` continues from: the checkpoint `latest` names if it is complete, otherwise
    the newest complete one (a crash between rename and `latest` leaves `latest` one behind)."""
    work_dir = Path(work_dir)
    candidates = complete_checkpoints(work_dir)
    latest = work_dir / LATEST
    if latest.is_file():
        named = work_dir / latest.read_text().strip()
        if is_complete(named) and (not candidates or checkpoint_step(named) >= checkpoint_step(candidates[-1])):
            return named
    return candidates[-1] if candidates else None


def resolve_resume(resume: str | None, work_dir: Path) -> Path | None:
    """--resume auto|DIR -> the checkpoint to continue from (None: start fresh)."""
    if resume is None:
        return None
    if resume == "auto":
        return find_resume_checkpoint(work_dir)
    path = Path(resume)
    if not is_complete(path):
        raise CheckpointError(f"--resume {resume}: not a complete vlft training checkpoint (need a "
                              f"checkpoint-<step> directory with {CHECKPOINT_MARKER} and {TRAINER_STATE})")
    return path


def check_work_dir(work_dir: Path, config: dict, *, resume_from: Path | None) -> None:
    """Refuse to mix experiments: a work dir with checkpoints is only continued (--resume), and only by
    a run of the same model; without --resume it must hold no checkpoint at all."""
    existing = complete_checkpoints(work_dir)
    if resume_from is not None:
        difference = _first_difference(_identity(_config_of(resume_from), ("model",)), _identity(config, ("model",)))
        if difference:
            raise ConfigError(f"--resume {resume_from}: it trained another model ({difference}); "
                              "resume with its own config or start in a fresh --work-dir")
        return
    if not existing:
        return
    newest = existing[-1]
    difference = _first_difference(_identity(_config_of(newest), ("model", "data")),
                                   _identity(config, ("model", "data")))
    if difference:
        raise ConfigError(f"{work_dir} holds checkpoints of another experiment ({difference}); "
                          "use a fresh --work-dir")
    raise ConfigError(f"{work_dir} already holds {newest.name} of this experiment; continue it with "
                      "--resume auto, or use a fresh --work-dir")


def save_checkpoint(work_dir: Path, step: int, write: Callable[[Path], None], *, is_main: bool,
                    save_total_limit: int | None) -> Path:
    """Write checkpoint-<step> atomically: `write(tmp_dir)` runs on every rank (DeepSpeed shards), then the
    main rank renames the directory into place, points `latest` at it and prunes old ones."""
    work_dir = Path(work_dir)
    final = work_dir / f"checkpoint-{step}"
    tmp = work_dir / (final.name + TMP_SUFFIX)
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    write(tmp)
    barrier()
    if is_main:
        if not (tmp / CHECKPOINT_MARKER).is_file():
            raise RuntimeError(f"{tmp}: written without {CHECKPOINT_MARKER}")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_latest(work_dir, final.name)
        prune_checkpoints(work_dir, save_total_limit, keep=final)
    barrier()
    return final


def write_latest(work_dir: Path, name: str) -> None:
    tmp = Path(work_dir) / (LATEST + TMP_SUFFIX)
    tmp.write_text(name + "\n")
    os.replace(tmp, Path(work_dir) / LATEST)


def prune_checkpoints(work_dir: Path, limit: int | None, *, keep: Path) -> list[Path]:
    """Keep the newest `limit` complete checkpoints (and `keep`); drop leftovers of interrupted saves."""
    work_dir = Path(work_dir)
    removed = [p for p in work_dir.glob(f"checkpoint-*{TMP_SUFFIX}") if p.is_dir()]
    if limit is not None and limit > 0:
        complete = [p for p in complete_checkpoints(work_dir) if p != Path(keep)]
        removed += complete[:max(0, len(complete) - (limit - 1))]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(ckpt_dir: Path, rank: int) -> Path:
    return Path(ckpt_dir) / f"rng_state_{rank}.pt"


def _config_of(ckpt_dir: Path) -> dict:
    from vlft.model.trained_state import read_checkpoint_meta

    return read_checkpoint_meta(ckpt_dir).get("config", {})


def _identity(config: dict, sections: tuple[str, ...]) -> dict:
    """The sections that define what an experiment learns, without runtime knobs."""
    identity = {}
    for section in sections:
        values = dict(config.get(section, {}))
        for key in _RUNTIME_KEYS.get(section, ()):
            values.pop(key, None)
        identity[section] = values
    return identity


def _first_difference(old, new, where: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = _first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    if old != new:
        return f"{where}: {old!r} there, {new!r} now"
    return None
