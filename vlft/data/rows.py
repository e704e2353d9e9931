"""Every distinct sample of the configured datasets, encoded once, in parallel, into the on-disk cache.

Training (`build_dataset`) and `vlft check-data` read the same rows. The pass runs through `datasets.map`
with ``num_proc`` worker processes (default: the usable CPUs, at most 8) and a progress bar (samples/s,
ETA); each row holds the ids and labels (long runs of one token -- image context, ignored labels -- stored
as (value, count), so an InternVL row is a few KB, not 25), the image sizes and EXIF orientations read from
the headers, the tile counts, and the problem that dropped the row, if any. The epoch order (repeats
applied) is an index array beside it. A second run, a resume or check-data with the same key opens the
cache memory-mapped and encodes nothing.

The key is everything that changes the rows: each annotation file's path, size and mtime (every annotation
of an InternVL meta, every file of a save_to_disk folder), the source settings (image_root, repeat,
max_tiles, name, format) and the seed (fractional repeats), the tokenizer's files (content hash) and added
tokens, every pipeline setting (template, system prompt, tiling and tile size, image tokens, tokens per
tile, max_length) and the source of `vlft.data` itself. Image files are not in the key: each row records
the size and mtime of its images (stat before the header is read; -1 for a missing file), and opening the
cache stats them again (no decode) and encodes again only the rows whose images changed, appeared or went
missing, rewriting the cache under the same key. An image replaced while a run trains is still caught when
it is loaded (the tile-count check of the dataset).
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlft.data import cache as disk
from vlft.data.encode import SampleError
from vlft.data.formats import DatasetSource, ReadReport, ReadWarning, _maybe_meta, _repeat, _stem, read_samples
from vlft.data.problems import MISSING_IMAGE, UNREADABLE_IMAGE
from vlft.data.record import IMAGE_PLACEHOLDER, Sample, Turn
from vlft.data.tiling import ImageError, ImageNotFoundError, read_image_header
from vlft.errors import DataError

log = logging.getLogger(__name__)

FATAL = "fatal"       # a row the tokenizer cannot encode at all (a token it lacks): every row would fail
MAX_PROCS = 8
_RUN = 8              # runs of one value at least this long are stored as (value, count)
_SMALL = 2_000        # rows per extra worker process below which the pool costs more than it saves
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "vocab.json", "merges.txt", "tokenizer.model", "vocab.txt", "spiece.model",
                    "chat_template.json", "chat_template.jinja")

_IN = datasets.Features({
    "source": datasets.Value("string"), "id": datasets.Value("string"), "dataset": datasets.Value("string"),
    "roles": datasets.List(datasets.Value("string")), "texts": datasets.List(datasets.Value("string")),
    "images": datasets.List(datasets.Value("string")), "max_tiles": datasets.Value("int32"),
})
_INTS = datasets.List(datasets.Value("int32"))
_LONGS = datasets.List(datasets.Value("int64"))
_OUT = datasets.Features({
    **{k: v for k, v in _IN.items() if k not in ("roles", "texts")},
    "ids": _INTS, "ids_run_at": _INTS, "ids_run_len": _INTS,
    "labels": _INTS, "labels_run_at": _INTS, "labels_run_len": _INTS,
    "length": datasets.Value("int32"), "image_tokens": datasets.Value("int32"), "tiles": datasets.Value("int32"),
    "tile_counts": _INTS, "widths": _INTS, "heights": _INTS, "orientations": _INTS,
    "image_bytes": _LONGS, "image_mtimes": _LONGS,  # each image's stat when its header was read (-1: missing)
    "placeholders": datasets.Value("int32"), "has_assistant": datasets.Value("bool"),
    "kind": datasets.Value("string"), "problem": datasets.Value("string"),
})


@dataclass
class EncodedRows:
    """The encoded rows (an Arrow table, memory-mapped from the cache) and how one epoch uses them."""

    table: pa.Table
    order: np.ndarray                  # epoch position -> row (repeats applied), int64
    read_problems: list[str]           # rows the reader skipped: "file:id: what"
    read_warnings: list[ReadWarning]   # rows kept with a warning
    empty: list[str]                   # datasets with no rows at all
    path: Path | None = None           # the cache folder (None: nothing to cache)
    built_in: float | None = None      # seconds spent encoding; None when an existing cache was opened
    reencoded: int | None = None       # rows encoded again because their images changed (None: a full build)
    _columns: dict = field(default_factory=dict, repr=False)

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def numpy(self, name: str) -> np.ndarray:
        """A scalar column as a numpy array (read once, then kept)."""
        if name not in self._columns:
            self._columns[name] = self.table.column(name).to_numpy(zero_copy_only=False)
        return self._columns[name]

    def ids_and_labels(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """One row's input ids and labels, expanded: int64 [length] each."""
        values = [self.table.column(name)[row].values.to_numpy(zero_copy_only=False)
                  for name in ("ids", "ids_run_at", "ids_run_len", "labels", "labels_run_at", "labels_run_len")]
        return _expand(*values[:3]), _expand(*values[3:])

    def image_sizes(self, row: int) -> tuple[list[int], list[int]]:
        """(widths, heights) of one row's images as shown, from their headers at encoding time."""
        return self.table.column("widths")[row].as_py(), self.table.column("heights")[row].as_py()

    def sample(self, row: int) -> Sample:
        """The row as a Sample without its turns (where, images, max_tiles: what loading pixels needs)."""
        get = self.table.select(["source", "id", "dataset", "images", "max_tiles"]).slice(row, 1).to_pylist()[0]
        return Sample(id=get["id"], source=get["source"], dataset=get["dataset"], turns=(),
                      images=tuple(get["images"]), max_tiles=get["max_tiles"])

    def where(self) -> pa.ChunkedArray:
        """"file:id" of every row."""
        return pc.binary_join_element_wise(self.table.column("source"), self.table.column("id"), ":")

    @property
    def cache_line(self) -> str:
        if self.path is None:
            return "data cache: none (no rows)"
        how = f"built in {self.built_in:.1f} s" if self.built_in is not None else "opened, nothing encoded"
        if self.reencoded:
            how = (f"opened; {self.reencoded:,} row(s) whose images changed since it was built encoded again "
                   f"in {self.built_in:.1f} s")
        return f"data cache: {self.path} ({self.num_rows:,} rows, {how}; `vlft cache list` / `clear`)"


def default_procs(rows: int) -> int:
    """Worker processes for the encoding pass: the usable CPUs (at most 8), fewer for a small set."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_PROCS, rows // _SMALL))


def builds_cache(rank: int, local_rank: int) -> bool:
    """Whether this process builds the cache: global rank 0, or each node's local rank 0 when
    VLFT_CACHE_NODE_LOCAL=1 says the cache folder is not shared between nodes."""
    return (local_rank if os.environ.get("VLFT_CACHE_NODE_LOCAL") == "1" else rank) == 0


def encode_rows(sources: Sequence[DatasetSource], pipeline, *, seed: int, root: Path | None = None,
                num_proc: int | None = None, builder: bool = True, wait: Callable[[], None] | None = None,
                say: Callable[[str], None] | None = None) -> EncodedRows:
    """Open the cache of these sources and this pipeline, building it first when there is none.

    Args:
        sources: the datasets, as `data.datasets` lists them.
        pipeline: the DataPipeline (tokenizer, template, tiling, image tokens, max_length...).
        seed: the fractional-repeat seed (`schedule.seed`).
        root: the cache root (default `cache.cache_root()`).
        num_proc: encoding processes (default `default_procs`).
        builder, wait: several processes: exactly one per cache folder builds (`builder=True`), every
            process calls `wait` (a barrier) once; the others open what the builder published. A builder
            that fails still calls `wait`, so nobody hangs, then raises.
        say: gets one line when a cache is damaged and rebuilt.

    Raises:
        DataError: a dataset cannot be read, the tokenizer cannot encode the rows, or (not the builder)
            the cache is missing after the builder's turn.
    """
    root = disk.cache_root() if root is None else Path(root)
    error = result = None
    try:
        key = disk.digest(key_parts(sources, pipeline, seed=seed))
        if builder:
            result = _open_or_build(sources, pipeline, seed=seed, root=root, key=key, num_proc=num_proc, say=say)
    except Exception as exc:  # reaches the barrier first: the other processes must not wait forever
        error = exc
    if wait is not None:
        wait()
    if error is not None:
        raise error
    if result is None:
        opened = disk.open_cache(root, key) if (root / key).is_dir() else None
        if opened is None:
            raise DataError(f"data cache {root / key} is missing after the building process's turn (its error, "
                            f"if any, is above): every process must see {disk.CACHE_ENV}={root}; for a folder "
                            "local to each node set VLFT_CACHE_NODE_LOCAL=1")
        result = _from_cache(opened, built_in=None)
    return result


def _open_or_build(sources, pipeline, *, seed, root, key, num_proc, say) -> EncodedRows:
    opened = disk.open_cache(root, key, on_damaged=say or log.warning)
    if opened is not None:
        changed = rows_with_changed_images(opened.table)
        if not len(changed):
            disk.touch(opened)
            return _from_cache(opened, built_in=None)
        start = time.perf_counter()
        patched = _encode_again(opened, changed, sources, pipeline, seed=seed, root=root, key=key)
        if patched is not None:
            return replace(_from_cache(patched, built_in=time.perf_counter() - start), reencoded=len(changed))
        disk._remove(opened.path)  # the annotations no longer give these rows: build it all again
    start = time.perf_counter()
    samples, order, report, empty = read_distinct(sources, seed=seed)
    if not samples:  # nothing to encode or cache
        return EncodedRows(table=_OUT.arrow_schema.empty_table(), order=np.zeros(0, np.int64),
                           read_problems=report.problems, read_warnings=report.warnings, empty=empty)
    with disk.BuildDir(root, key) as build:
        tables = _encode_into(build.path, samples, pipeline, key=key, num_proc=num_proc)
        del samples
        meta = {"rows": sum(_rows_in(build.path / t) for t in tables), "tables": tables,
                "read_problems": report.problems, "empty": empty,
                "read_warnings": [[w.kind, w.where, w.what] for w in report.warnings],
                "description": f"{', '.join(s.path for s in sources)} | tokenizer "
                               f"{getattr(pipeline.tokenizer, 'name_or_path', '?')}"}
        final = build.publish(meta, arrays={"order": np.asarray(order, dtype=np.int64)})
    opened = disk.open_cache(root, key)
    if opened is None or opened.path != final:
        raise DataError(f"data cache {final} could not be read back right after it was written: is the disk "
                        f"full? (free space there, or set {disk.CACHE_ENV})")
    return _from_cache(opened, built_in=time.perf_counter() - start)


def _from_cache(opened: disk.OpenedCache, *, built_in: float | None) -> EncodedRows:
    meta = opened.meta
    return EncodedRows(table=opened.table, order=np.asarray(opened.arrays["order"]),
                       read_problems=list(meta["read_problems"]),
                       read_warnings=[ReadWarning(*w) for w in meta["read_warnings"]],
                       empty=list(meta["empty"]), path=opened.path, built_in=built_in)


# ---------------------------------------------------------------------------------------------- reading

def read_distinct(sources: Sequence[DatasetSource], *, seed: int):
    """(every distinct row, the epoch as row indices, the ReadReport, the names of empty datasets).

    Each source is read with repeat 1, so check-data also sees rows a fractional repeat leaves out; the
    epoch applies the repeat to row positions exactly as the reader would (`formats._repeat`). Repeats inside
    an InternVL meta (repeat_time) are the same objects, so each row is encoded once. A meta that is itself
    repeated is read with its repeat (its entries' repeats multiply it inside the reader).
    """
    report = ReadReport()
    rows: list[Sample] = []
    order: list[int] = []
    empty: list[str] = []
    index: dict[int, int] = {}
    for source in sources:
        repeated_meta = source.repeat != 1.0 and _maybe_meta(os.fspath(source.path), source.format) is not None
        part = read_samples(source if repeated_meta else replace(source, repeat=1.0), seed=seed, report=report)
        if not part:
            empty.append(source.name or Path(source.path).stem)
        positions = []
        for sample in part:
            positions.append(index.setdefault(id(sample), len(rows)))
            if positions[-1] == len(rows):
                rows.append(sample)
        if repeated_meta or source.repeat == 1.0:
            order.extend(positions)
        else:
            name = source.name or _stem(os.fspath(source.path))
            order.extend(positions[i] for i in _repeat(list(range(len(positions))), source.repeat, seed=seed, key=name))
    return rows, order, report, empty


# ---------------------------------------------------------------------------------------------- the key

def key_parts(sources: Sequence[DatasetSource], pipeline, *, seed: int) -> dict:
    """Everything that changes the encoded rows (see the module docstring)."""
    return {"sources": [_source_identity(s) for s in sources], "seed": seed,
            "pipeline": _pipeline_identity(pipeline), "tokenizer": _tokenizer_identity(pipeline.tokenizer),
            "code": _code_identity(), "cwd": os.getcwd()}


def _file_identity(path: str) -> list:
    """[size, mtime_ns] of a file; of every file under a folder (save_to_disk), by relative path."""
    try:
        if os.path.isdir(path):
            return sorted([os.path.relpath(os.path.join(d, f), path), *_stat(os.path.join(d, f))]
                          for d, _, files in os.walk(path) for f in files)
        return _stat(path)
    except OSError:
        return ["missing"]


def _stat(path: str) -> list:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _source_identity(source: DatasetSource) -> dict:
    path = os.fspath(source.path)
    files = {os.path.abspath(path): _file_identity(path)}
    meta = _maybe_meta(path, source.format) if os.path.isfile(path) else None
    for entry in (meta or {}).values():
        annotation = entry.get("annotation") if isinstance(entry, dict) else None
        if isinstance(annotation, str) and annotation:
            full = annotation if os.path.isabs(annotation) else os.path.join(os.path.dirname(os.path.abspath(path)),
                                                                              annotation)
            files[os.path.abspath(full)] = _file_identity(full)
    return {"source": repr(source), "files": files}


def _pipeline_identity(pipeline) -> dict:
    """repr of every pipeline setting but the tokenizer (frozen dataclasses: stable, complete reprs)."""
    if dataclasses.is_dataclass(pipeline):
        values = {f.name: getattr(pipeline, f.name) for f in dataclasses.fields(pipeline)}
    else:
        values = dict(vars(pipeline))
    return {name: repr(value) for name, value in values.items() if name != "tokenizer"}


def _tokenizer_identity(tokenizer) -> dict:
    """The tokenizer's files (content hash), class, size and added tokens."""
    hasher = hashlib.sha256()
    folder = getattr(tokenizer, "name_or_path", "") or ""
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name in _TOKENIZER_FILES or name.startswith("tokenizer"):
                hasher.update(name.encode())
                with open(os.path.join(folder, name), "rb") as f:
                    hasher.update(f.read())
    else:  # built in memory: the vocabulary itself
        hasher.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    added = sorted(tokenizer.get_added_vocab().items()) if hasattr(tokenizer, "get_added_vocab") else []
    return {"class": type(tokenizer).__name__, "files": hasher.hexdigest(), "size": len(tokenizer),
            "added": repr(added)}


@lru_cache(maxsize=1)
def _code_identity() -> str:
    """The source of the code that turns samples into rows: a fix to it never reads stale rows."""
    hasher = hashlib.sha256()
    package = Path(__file__).resolve().parent.parent
    for folder in ("data", "families"):
        for path in sorted((package / folder).glob("*.py")):
            hasher.update(path.name.encode() + path.read_bytes())
    return hasher.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- encoding

def _encode_into(folder: Path, samples: list[Sample], pipeline, *, key: str, num_proc: int | None) -> list[str]:
    """Encode every sample with datasets.map into Arrow files in `folder`; returns their names."""
    columns = {"source": [], "id": [], "dataset": [], "roles": [], "texts": [], "images": [], "max_tiles": []}
    for s in samples:
        columns["source"].append(s.source)
        columns["id"].append(s.id)
        columns["dataset"].append(s.dataset)
        columns["roles"].append([t.role for t in s.turns])
        columns["texts"].append([t.text for t in s.turns])
        columns["images"].append(list(s.images))
        columns["max_tiles"].append(s.max_tiles)
    procs = num_proc or default_procs(len(samples))
    procs = max(1, min(procs, len(samples)))
    rows = datasets.Dataset.from_dict(columns, features=_IN)
    del columns
    encoded = rows.map(_encode_batch, batched=True, batch_size=64, num_proc=procs if procs > 1 else None,
                       fn_kwargs={"pipeline": pipeline}, remove_columns=["roles", "texts"], features=_OUT,
                       cache_file_name=str(folder / "rows.arrow"), load_from_cache_file=False,
                       new_fingerprint=key, desc=f"vlft: encoding {len(samples):,} samples ({procs} processes)")
    fatal = pc.index(encoded.data.column("kind"), FATAL).as_py()
    if fatal >= 0:  # the tokenizer lacks a token the template or the images need: one line, not N
        raise DataError(encoded[fatal]["problem"])
    names = [Path(f["filename"]).name for f in encoded.cache_files]
    del encoded, rows
    return names


def _rows_in(path: Path) -> int:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all().num_rows


def _encode_batch(batch: dict, *, pipeline) -> dict:
    out = {name: [] for name in _OUT if name not in _IN}
    for i in range(len(batch["id"])):
        sample = Sample(id=batch["id"][i], source=batch["source"][i], dataset=batch["dataset"][i],
                        turns=tuple(Turn(r, t) for r, t in zip(batch["roles"][i], batch["texts"][i])),
                        images=tuple(batch["images"][i]), max_tiles=batch["max_tiles"][i])
        for name, value in encode_row(sample, pipeline).items():
            out[name].append(value)
    return out


def encode_row(sample: Sample, pipeline) -> dict:
    """One row of the cache: ids, labels, image facts, and the problem that drops it (kind None: usable)."""
    headers, counts, kind, problem = [], [], None, None
    ids: list[int] = []
    labels: list[int] = []
    image_tokens = 0
    stats = [_image_stat(path) for path in sample.images]  # before the headers: a later change is seen
    try:
        for path in sample.images:
            headers.append(read_image_header(path))
        sizes = [(h.width, h.height) for h in headers]
        counts = pipeline.tile_counts_for_sizes(sample, sizes)
        encoded = pipeline.encode(sample, counts, sizes)
        ids, labels, image_tokens = encoded.input_ids, encoded.labels, encoded.num_image_tokens
    except SampleError as exc:
        kind, problem = exc.kind, str(exc)
    except ImageError as exc:
        kind = MISSING_IMAGE if isinstance(exc, ImageNotFoundError) else UNREADABLE_IMAGE
        problem = f"{sample.where}: {exc}"
    except ValueError as exc:
        kind, problem = FATAL, f"{sample.where}: {exc}"
    row_ids, row_labels = _compact(ids), _compact(labels)
    return {"ids": row_ids[0], "ids_run_at": row_ids[1], "ids_run_len": row_ids[2],
            "labels": row_labels[0], "labels_run_at": row_labels[1], "labels_run_len": row_labels[2],
            "length": len(ids), "image_tokens": image_tokens, "tiles": sum(counts), "tile_counts": counts,
            "widths": [h.width for h in headers], "heights": [h.height for h in headers],
            "orientations": [h.orientation for h in headers],
            "image_bytes": [st[0] for st in stats], "image_mtimes": [st[1] for st in stats],
            "placeholders": sum(t.text.count(IMAGE_PLACEHOLDER) for t in sample.turns),
            "has_assistant": any(t.role == "assistant" for t in sample.turns), "kind": kind, "problem": problem}


def _compact(values: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values with each run of >= _RUN equal values kept once, where those runs sit, their lengths).

    >>> [a.tolist() for a in _compact([5] + [9] * 10 + [1, 1])]
    [[5, 9, 1, 1], [1], [10]]
    """
    array = np.asarray(values, dtype=np.int32)
    if len(array) == 0:
        return array, array, array
    starts = np.flatnonzero(np.r_[True, array[1:] != array[:-1]])
    lengths = np.diff(np.r_[starts, len(array)])
    keep = np.repeat(lengths < _RUN, lengths)
    keep[starts] = True
    long = lengths >= _RUN
    position = np.cumsum(keep) - 1
    return array[keep], position[starts[long]].astype(np.int32), lengths[long].astype(np.int32)


def _expand(values: np.ndarray, run_at: np.ndarray, run_len: np.ndarray) -> np.ndarray:
    """The inverse of `_compact`, as int64.

    >>> _expand(*_compact([5] + [9] * 10 + [1, 1])).tolist() == [5] + [9] * 10 + [1, 1]
    True
    """
    counts = np.ones(len(values), dtype=np.int64)
    counts[run_at] = run_len
    return np.repeat(values.astype(np.int64), counts)


# --------------------------------------------------------------------- rows whose images changed since

_MISSING = (-1, -1)


def _image_stat(path: str) -> tuple[int, int]:
    """(size, mtime_ns) of an image; (-1, -1) when it cannot be stat'ed."""
    try:
        size, mtime = _stat(path)
    except OSError:
        return _MISSING
    return size, mtime


def rows_with_changed_images(table: pa.Table) -> np.ndarray:
    """The rows (sorted) with an image whose size or mtime is not what the row recorded: replaced, touched,
    appeared or gone. One os.stat per image, no decode; a plain loop (a million stats: the syscall is the cost,
    a dict of seen paths or numpy per item would cost more than it saves)."""
    images = table.column("images")
    counts = pc.fill_null(pc.list_value_length(images), 0).to_numpy(zero_copy_only=False)
    paths = pc.list_flatten(images).to_pylist()
    sizes = pc.list_flatten(table.column("image_bytes")).to_pylist()
    mtimes = pc.list_flatten(table.column("image_mtimes")).to_pylist()
    changed, stat = [], os.stat
    for i, path in enumerate(paths):
        try:
            st = stat(path)
        except OSError:
            if sizes[i] != _MISSING[0]:
                changed.append(i)
            continue
        if st.st_size != sizes[i] or st.st_mtime_ns != mtimes[i]:
            changed.append(i)
    return np.unique(np.repeat(np.arange(len(counts)), counts)[changed]) if changed else np.zeros(0, np.int64)


def _encode_again(opened: disk.OpenedCache, changed: np.ndarray, sources, pipeline, *, seed: int, root: Path,
                  key: str) -> disk.OpenedCache | None:
    """The cache with only the `changed` rows encoded again (the others copied), published under the same key;
    None when the annotations no longer give the same rows (the caller builds everything again)."""
    samples, order, _, _ = read_distinct(sources, seed=seed)  # the turns: the cache does not keep them
    table = opened.table
    if len(samples) != table.num_rows or not np.array_equal(order, opened.arrays["order"]):
        return None
    sources_ids = table.select(["source", "id"]).take(pa.array(changed)).to_pylist()
    fresh = []
    for row, was in zip(changed.tolist(), sources_ids):
        sample = samples[row]
        if (sample.source, sample.id) != (was["source"], was["id"]):
            return None
        encoded = encode_row(sample, pipeline)
        if encoded["kind"] == FATAL:
            raise DataError(encoded["problem"])
        fresh.append({"source": sample.source, "id": sample.id, "dataset": sample.dataset,
                      "images": list(sample.images), "max_tiles": sample.max_tiles, **encoded})
    del samples
    fresh_table = pa.Table.from_pylist(fresh, schema=table.schema)
    with disk.BuildDir(root, key) as build:
        with pa.OSFile(str(build.path / "rows.arrow"), "wb") as sink, \
                pa.ipc.new_stream(sink, table.schema) as writer:
            start = 0
            for k, row in enumerate(changed.tolist()):  # unchanged stretches are written as they are
                writer.write_table(table.slice(start, row - start))
                writer.write_table(fresh_table.slice(k, 1))
                start = row + 1
            writer.write_table(table.slice(start))
        meta = {k: v for k, v in opened.meta.items() if k not in ("format", "key", "files", "arrays", "created")}
        arrays = {name: np.array(array) for name, array in opened.arrays.items()}  # off the old files
        old = opened.path
        del opened, table
        disk._remove(old)  # publish renames into the key's folder: it must be free
        final = build.publish({**meta, "tables": ["rows.arrow"]}, arrays=arrays)
    reopened = disk.open_cache(root, key)
    if reopened is None or reopened.path != final:
        raise DataError(f"data cache {final} could not be read back right after it was written: is the disk "
                        f"full? (free space there, or set {disk.CACHE_ENV})")
    return reopened
