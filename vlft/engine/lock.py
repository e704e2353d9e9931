"""One run per work directory: an advisory lock that the kernel releases when its holder dies.

Two `vlft train` on one work dir would interleave their logs and prune each other's checkpoints, so the
main rank takes `work_dir/.vlft.lock` (flock) before anything is written there. The file names the holder
(pid and host), and a second run is refused with that name. A crash or SIGKILL leaves no stale lock: the
lock belongs to the open file, not to the file's existence.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Iterator

from vlft.errors import ConfigError

LOCK_FILE = ".vlft.lock"


@contextlib.contextmanager
def work_dir_lock(work_dir: Path, *, enabled: bool = True) -> Iterator[None]:
    """Hold the work dir's lock for the duration. A work dir this call created and left empty is removed
    again on the way out, so a run refused for bad input leaves nothing behind."""
    if not enabled:
        yield
        return
    work_dir = Path(work_dir)
    created = _make_dir(work_dir)
    path = work_dir / LOCK_FILE
    try:
        fd = _acquire(path)
    except BaseException:
        if created:
            _remove_if_empty(work_dir)
        raise
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        if created:
            _remove_if_empty(work_dir)


def _make_dir(work_dir: Path) -> bool:
    """Create the work dir (and parents); True when it did not exist. One line for what stands in the way."""
    if work_dir.is_dir():
        if os.statvfs(work_dir).f_flag & os.ST_RDONLY:
            raise ConfigError(f"{work_dir}: the work dir is on a read-only filesystem; choose another --work-dir")
        if not os.access(work_dir, os.W_OK | os.X_OK):
            raise ConfigError(f"{work_dir}: the work dir is not writable; fix its permissions or choose "
                              "another --work-dir")
        return False
    for parent in [work_dir, *work_dir.parents]:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{work_dir}: cannot be a work dir, {parent} is a file; choose another --work-dir")
    try:
        work_dir.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"{work_dir}: cannot create the work dir ({exc.strerror}); choose another "
                          "--work-dir") from None
    return True


def _acquire(path: Path) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"{path.parent}: the work dir is not writable ({exc.strerror}); fix its "
                              "permissions or choose another --work-dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"{path.parent} is in use by another vlft train ({holder}); wait for it to "
                                  "finish or use another --work-dir") from None
            raise
        # The previous holder may have unlinked the file between our open and our lock: then we hold a
        # lock on a name nobody else sees, and must take the new file instead.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
        if "pid" in record:
            return f"pid {record['pid']} on {record.get('host', '?')}"
    return "a process that holds its lock"


def _remove_if_empty(work_dir: Path) -> None:
    with contextlib.suppress(OSError):
        work_dir.rmdir()
