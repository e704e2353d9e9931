"""Write an output directory all or nothing: fill ``OUT.tmp-<pid>`` beside OUT, rename it into place at the end.

A failure at any point (a full disk, a failed verification, Ctrl-C) removes the staging directory and
leaves OUT as it was: absent, or with its old content when ``--overwrite`` was given. A process killed
outright (SIGKILL, the OOM killer, a power cut) cannot clean up; the next export to the same OUT removes
the staging directories of processes that are gone (a model-sized leftover each) and says so.
"""
from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from vlft.errors import CheckpointError, VlftError


class ExportError(VlftError):
    """Writing an export failed (disk full, permissions); nothing was left under the output's name."""


def check_output(out: str | Path, *, overwrite: bool, sources: Sequence[str | Path] = ()) -> Path:
    """Refuse an OUT that would lose data: a non-empty directory without overwrite, a file, or a source."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a directory; give a directory path for OUT")
    resolved = out.resolve()
    for source in sources:
        source = Path(source).resolve()
        if source == resolved or resolved in source.parents:
            raise CheckpointError(f"{out}: OUT would replace the input {source}; choose another OUT")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out}: exists and is not empty; pass --overwrite to replace it, or choose another OUT")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OverflowError:  # a number no process can have
        return False
    return True


def remove_stale_staging(out: Path, log: Callable[[str], None] = print) -> list[Path]:
    """Remove ``OUT.tmp-<pid>`` directories whose process is gone; a live one (an export running now) stays."""
    removed = []
    prefix = f"{out.name}.tmp-"
    if not out.parent.is_dir():
        return removed
    for leftover in sorted(p for p in out.parent.iterdir() if p.name.startswith(prefix)):
        pid = leftover.name[len(prefix):]
        if not (pid.isdigit() and leftover.is_dir()) or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    if removed:
        log(f"removed {', '.join(str(p) for p in removed)}: left by an export (pid no longer running) that was killed "
            "before it could clean up")
    return removed


@contextmanager
def staged_output(out: str | Path, *, overwrite: bool, sources: Sequence[str | Path] = (),
                  log: Callable[[str], None] = print) -> Iterator[Path]:
    """Yield an empty staging directory; on success it becomes ``out``, on any failure it is removed."""
    out = check_output(out, overwrite=overwrite, sources=sources)
    staging = out.parent / f"{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out, log)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
    except OSError as exc:
        raise ExportError(f"{out}: cannot create the output directory ({_reason(exc)})") from None
    try:
        yield staging
        _swap_in(staging, out)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, VlftError):
            raise ExportError(f"{out}: writing failed ({_reason(exc)}); nothing was written to {out}"
                              + (" - free some space and retry" if exc.errno == errno.ENOSPC else "")) from None
        raise


def _swap_in(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    old = out.parent / f"{out.name}.old-{os.getpid()}"
    out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _reason(exc: OSError) -> str:
    if exc.errno is not None:
        return os.strerror(exc.errno)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
