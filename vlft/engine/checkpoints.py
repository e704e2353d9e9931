"""The work directory's checkpoints: atomic saves, `latest`, pruning, the resume point, whose dir it is.

    work_dir/
      checkpoint-<step>/       complete: renamed into place only after everything inside was written; holds
                               the state after optimizer step <step>, vlft_checkpoint.json (the model-state
                               marker), trainer_state.json (step, epoch, position in the epoch) and
                               checkpoint_files.json (every file and its size, written last)
      checkpoint-<step>.tmp/   being written (or left by a crash): never resumed from, removed by the next save
      latest                   the name of the newest complete checkpoint
      rolled_back-<step>-<time>/  checkpoints (and the log) of a branch abandoned by resuming an older checkpoint
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from vlft.engine.config_changes import Change, config_changes, describe
from vlft.engine.distributed import barrier
from vlft.engine.manifest import check_intact, damage, write_manifest
from vlft.errors import CheckpointError, ConfigError
from vlft.model.layouts import CHECKPOINT_MARKER
from vlft.model.trained_state import read_checkpoint_meta

LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
TMP_SUFFIX = ".tmp"
LOG_FILE = "train_log.jsonl"
_NAME = re.compile(r"^checkpoint-(\d+)$")


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


@dataclass
class ResumePoint:
    """What --resume settled on, and what the user should be told about the way there."""

    checkpoint: Path | None
    notes: list[str] = field(default_factory=list)


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


def find_resume_checkpoint(work_dir: Path, notes: list[str] | None = None) -> Path | None:
    """What `--resume auto` continues from: the checkpoint `latest` names if it is complete, otherwise
    the newest complete one (a crash between rename and `latest` leaves `latest` one behind); a damaged
    one is skipped for the next older intact one, with a note saying so."""
    work_dir = Path(work_dir)
    candidates = complete_checkpoints(work_dir)
    latest = work_dir / LATEST
    if latest.is_file():
        named = work_dir / latest.read_text().strip()
        if is_complete(named) and candidates and checkpoint_step(named) >= checkpoint_step(candidates[-1]):
            candidates = [c for c in candidates if c != named] + [named]
    for candidate in reversed(candidates):
        problem = damage(candidate)
        if problem is None:
            return candidate
        if notes is not None:
            notes.append(f"{candidate.name} is damaged ({problem}); skipped")
    return None


def resolve_resume(resume: str | None, work_dir: Path) -> ResumePoint:
    """--resume auto|DIR -> the checkpoint to continue from (None: start fresh), checked before any loading."""
    work_dir = Path(work_dir)
    if resume is None:
        return ResumePoint(None)
    if resume == "auto":
        notes: list[str] = []
        found = find_resume_checkpoint(work_dir, notes)
        if found is None and complete_checkpoints(work_dir):
            raise CheckpointError(f"--resume auto: no intact checkpoint in {work_dir} ({'; '.join(notes)}); "
                                  "remove the damaged ones to start from the base model, or use a fresh --work-dir")
        if found is not None and notes:
            notes.append(f"resuming from {found.name}, the newest intact checkpoint")
        unfinished = sorted(p.name for p in work_dir.glob("checkpoint-*") if p.is_dir() and not is_complete(p))
        if found is None and unfinished:
            notes.append(f"{', '.join(unfinished)} never finished saving (no {CHECKPOINT_MARKER} or "
                         f"{TRAINER_STATE}); nothing to resume, starting from the base model")
        return ResumePoint(found, notes)
    path = Path(resume)
    if not is_complete(path):
        raise CheckpointError(f"--resume {resume}: not a complete vlft training checkpoint (need a "
                              f"checkpoint-<step> directory with {CHECKPOINT_MARKER} and {TRAINER_STATE})")
    check_intact(path)
    return ResumePoint(path)


def check_work_dir(work_dir: Path, config: dict, *, resume_from: Path | None,
                   allow_changes: bool = False) -> list[Change]:
    """Refuse to mix experiments: a work dir with checkpoints is only continued (--resume), and only by a run
    of the same config. Returns the changes a resume accepted (runtime ones, and with allow_changes the
    ones that break exactness); a changed model is always refused."""
    existing = complete_checkpoints(work_dir)
    if resume_from is not None:
        changes = [c for c in config_changes(_config_of(resume_from), config) if c.kind != "runtime"]
        model = [c for c in changes if c.kind == "model"]
        if model:
            raise ConfigError(f"--resume {resume_from}: it trained another model ({describe(model)}); "
                              "resume with its own config or start in a fresh --work-dir")
        if changes and not allow_changes:
            raise ConfigError(f"--resume {resume_from}: the config changed since ({describe(changes)}); a resume "
                              "with these would not continue the same run. Restore them, or pass "
                              "--resume-allow-changes to apply them from the resume step")
        return changes
    if not existing:
        return []
    newest = existing[-1]
    other = [c for c in config_changes(_config_of(newest), config)
             if c.kind != "runtime" and c.key.split(".")[0] in ("model", "data")]
    if other:
        raise ConfigError(f"{work_dir} holds checkpoints of another experiment ({describe(other)}); "
                          "use a fresh --work-dir")
    raise ConfigError(f"{work_dir} already holds {newest.name} of this experiment; continue it with "
                      "--resume auto, or use a fresh --work-dir")


def set_aside_newer(work_dir: Path, resume_from: Path) -> Path | None:
    """Resuming an older checkpoint abandons the branch after it: move that branch's checkpoints and log
    into rolled_back-<step>-<time>/ (nothing is deleted), so pruning and --resume auto see one history."""
    work_dir, step = Path(work_dir), checkpoint_step(resume_from)
    newer = [p for p in work_dir.glob("checkpoint-*")
             if p.is_dir() and (checkpoint_step(Path(p.name.removesuffix(TMP_SUFFIX))) or 0) > step]
    if not newer:
        return None
    aside = work_dir / f"rolled_back-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir()
    for path in newer:
        os.replace(path, aside / path.name)
    if (work_dir / LOG_FILE).is_file():
        shutil.copy2(work_dir / LOG_FILE, aside / LOG_FILE)
    if Path(resume_from).parent.resolve() == work_dir.resolve():
        write_latest(work_dir, Path(resume_from).name)
    else:
        (work_dir / LATEST).unlink(missing_ok=True)
    return aside


def set_aside_log(work_dir: Path) -> Path | None:
    """A fresh start in a work dir whose log has rows (an earlier start that never finished a checkpoint)
    keeps that log as train_log.<time>.jsonl instead of writing over it."""
    log = Path(work_dir) / LOG_FILE
    if not log.is_file() or not log.read_text().strip():
        return None
    kept = log.with_name(f"train_log.{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    os.replace(log, kept)
    return kept


def save_checkpoint(work_dir: Path, step: int, write: Callable[[Path], None], *, is_main: bool,
                    save_total_limit: int | None) -> Path:
    """Write checkpoint-<step> atomically: `write(tmp_dir)` runs on every rank (DeepSpeed shards), then the
    main rank renames the directory into place, points `latest` at it and prunes old ones."""
    work_dir = Path(work_dir)
    final = work_dir / f"checkpoint-{step}"
    tmp = work_dir / (final.name + TMP_SUFFIX)
    try:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        write(tmp)
        barrier()
        if is_main:
            if not (tmp / CHECKPOINT_MARKER).is_file():
                raise RuntimeError(f"{tmp}: written without {CHECKPOINT_MARKER}")
            write_manifest(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            write_latest(work_dir, final.name)
            prune_checkpoints(work_dir, save_total_limit, keep=final)
    except OSError as exc:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = find_resume_checkpoint(work_dir)
        reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
        raise CheckpointError(f"saving {final} failed: {reason} ({exc.filename or tmp}); "
                              + (f"{previous.name} is intact, free space and continue with --resume auto"
                                 if previous else "no earlier checkpoint to resume from")) from None
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


def _config_of(ckpt_dir: Path) -> dict:
    return read_checkpoint_meta(ckpt_dir).get("config", {})
