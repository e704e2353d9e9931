"""The encoded-dataset cache on disk: where it lives, its key, atomic publishing, checked opening, list, clear.

Layout: ``<root>/<key>/`` holds the Arrow files `datasets.map` wrote (memory-mapped when opened), small
``.npy`` arrays and ``meta.json`` (what was built from what, file sizes, row count). A build writes into
``<root>/.building-<key>-<pid>-<random>/`` and renames it to ``<root>/<key>`` only when every file is
written and synced, so a half-written cache never has the name a reader opens. Opening checks every file's
recorded size and the row count: a truncated or damaged cache is moved aside, removed and built again.

The root is ``$VLFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/vlft/datasets``, else ``~/.cache/vlft/datasets``
(as `datasets` keeps its cache under ``~/.cache/huggingface/datasets``): one cache per machine set, shared by
every run, resume, work dir and `vlft check-data` with the same key.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from vlft.errors import DataError

CACHE_ENV = "VLFT_CACHE_DIR"
META = "meta.json"
FORMAT = 2            # bump when the layout changes; part of every key (2: rows record their images' stat)
_BUILDING = ".building-"
_STALE = ".stale-"


def cache_root() -> Path:
    """Where caches live: $VLFT_CACHE_DIR, else $XDG_CACHE_HOME/vlft/datasets, else ~/.cache/vlft/datasets."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vlft" / "datasets"


def digest(parts: dict) -> str:
    """The key of a cache: sha256 of the canonical JSON of everything that changes its contents (24 hex digits).

    >>> digest({"a": 1}) == digest({"a": 1}) != digest({"a": 2})
    True
    """
    text = json.dumps({"format": FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class OpenedCache:
    """A finished, checked cache: its Arrow table (memory-mapped), its arrays and its meta."""

    path: Path
    table: pa.Table
    arrays: dict[str, np.ndarray]
    meta: dict


class BuildDir:
    """A private folder to build a cache in; `publish` makes it the cache, leaving it without publishing
    removes it (an interrupted build leaves nothing a reader could open).

    Usage::

        with BuildDir(root, key) as build:
            ...write files into build.path...
            build.publish(meta, arrays={"order": order})
    """

    def __init__(self, root: Path, key: str):
        self.root, self.key = Path(root), key
        self.path = self.root / f"{_BUILDING}{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.published: Path | None = None

    def __enter__(self) -> BuildDir:
        try:
            self.path.mkdir(parents=True)
        except OSError as exc:
            raise DataError(f"{self.root}: cannot write the data cache here ({exc.strerror or exc}); set "
                            f"{CACHE_ENV} to a writable folder") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.published is None:
            shutil.rmtree(self.path, ignore_errors=True)

    def publish(self, meta: dict, arrays: dict[str, np.ndarray]) -> Path:
        """Write the arrays and meta.json (with every file's size), sync, and rename into place."""
        for name, array in arrays.items():
            np.save(self.path / f"{name}.npy", np.ascontiguousarray(array))
        files = {p.name: p.stat().st_size for p in sorted(self.path.iterdir()) if p.name != META}
        meta = {**meta, "format": FORMAT, "key": self.key, "files": files, "arrays": sorted(arrays),
                "created": time.time()}
        (self.path / META).write_text(json.dumps(meta))
        for p in self.path.iterdir():
            _fsync(p)
        _fsync(self.path)
        final = self.root / self.key
        try:
            os.rename(self.path, final)
        except OSError:  # another builder published the same key first: theirs is as good as ours
            if open_cache(self.root, self.key) is None:
                _remove(final)
                os.rename(self.path, final)
            else:
                shutil.rmtree(self.path, ignore_errors=True)
        _fsync(self.root)
        self.published = final
        return final


def open_cache(root: Path, key: str, *, on_damaged: Callable[[str], None] | None = None) -> OpenedCache | None:
    """The cache of `key`, checked; None when there is none. A damaged one (a file missing or not the size
    recorded, a row count that disagrees, unreadable meta) is removed, `on_damaged` is told why, and None
    is returned so that the caller builds it again."""
    path = Path(root) / key
    if not path.is_dir():
        return None
    try:
        meta = json.loads((path / META).read_text())
        if meta.get("format") != FORMAT or meta.get("key") != key:
            raise ValueError(f"format {meta.get('format')} / key {meta.get('key')} do not match")
        for name, size in meta["files"].items():
            found = (path / name).stat().st_size
            if found != size:
                raise ValueError(f"{name} is {found} bytes, {size} when written (truncated?)")
        table = _read_tables([path / name for name in meta["tables"]])
        if table.num_rows != meta["rows"]:
            raise ValueError(f"{table.num_rows} rows, {meta['rows']} when written")
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
        if on_damaged is not None:
            on_damaged(f"data cache {path} is damaged ({exc}); building it again")
        _remove(path)
        return None
    return OpenedCache(path=path, table=table, arrays=arrays, meta=meta)


def touch(opened: OpenedCache) -> None:
    """Mark a cache as used now (`clear_caches(older_than_days=...)` keeps what is in use)."""
    try:
        os.utime(opened.path / META)
    except OSError:  # a read-only cache is still usable
        pass


def _read_tables(paths: list[Path]) -> pa.Table:
    """The Arrow stream files `datasets` writes, memory-mapped (nothing is read until a row is used)."""
    tables = []
    for path in paths:
        with pa.memory_map(str(path)) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


@dataclass(frozen=True)
class CacheEntry:
    """One cache folder, for `vlft cache list` / `clear`."""

    path: Path
    complete: bool        # False: a build in progress or interrupted (never read)
    rows: int
    size_bytes: int
    created: float        # epoch seconds (0 when unknown)
    last_used: float
    description: str      # the datasets it was built from, and the model's tokenizer

    def line(self) -> str:
        state = "" if self.complete else "  (incomplete: being built, or interrupted)"
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.last_used)) if self.last_used else "?"
        return (f"{self.path.name}  {self.rows:>10,} rows  {self.size_bytes / 2**20:>9,.1f} MiB  "
                f"used {when}  {self.description}{state}")


def list_caches(root: Path | None = None) -> list[CacheEntry]:
    """Every cache under the root (default `cache_root()`), most recently used first."""
    root = cache_root() if root is None else Path(root)
    if not root.is_dir():
        return []
    entries = []
    for path in root.iterdir():
        if not path.is_dir() or path.name.startswith(_STALE):
            continue
        building = path.name.startswith(_BUILDING)
        meta = {}
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, ValueError):
            if not building:
                continue  # not one of ours
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        used = _mtime(path / META) or _mtime(path)
        entries.append(CacheEntry(path=path, complete=not building and bool(meta), rows=int(meta.get("rows", 0)),
                                  size_bytes=size, created=float(meta.get("created", 0)), last_used=used,
                                  description=str(meta.get("description", ""))))
    return sorted(entries, key=lambda e: e.last_used, reverse=True)


def clear_caches(root: Path | None = None, *, older_than_days: float | None = None) -> list[CacheEntry]:
    """Remove caches (all, or those unused for `older_than_days`); returns what was removed. Only folders
    this module made are touched."""
    now = time.time()
    removed = []
    for entry in list_caches(root):
        if older_than_days is not None and now - entry.last_used < older_than_days * 86400:
            continue
        _remove(entry.path)
        removed.append(entry)
    return removed


def _remove(path: Path) -> None:
    """Rename aside first (a reader never sees a half-removed cache), then delete."""
    aside = path.parent / f"{_STALE}{path.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, aside)
    except OSError:
        aside = path
    shutil.rmtree(aside, ignore_errors=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)
