"""A config's datasets (annotation files, or InternVL meta files of several) into Samples, repeats applied.

Reading resolves image paths but never opens an image. A file that cannot be read at all raises
`DataFormatError`; a row that is structurally bad is skipped and written to `ReadReport.problems` as one
``file:sample-id: what is wrong`` line when a report is given, and raised otherwise. A row that is read but
looks wrong (see `normalize_turns`, or an image path leaving image_root) is kept and listed in
`ReadReport.warnings`. Text files are UTF-8 (a byte-order mark is allowed).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

from vlft.data.readers.annotation import read_annotation
from vlft.data.readers.internvl_meta import maybe_meta, meta_entries
from vlft.data.readers.paths import image_root, stem
from vlft.data.readers.repeat import check_repeat, repeat
from vlft.data.readers.sniff import FORMATS
from vlft.data.readers.source import DataFormatError, DatasetSource, ReadReport
from vlft.data.record import Sample


def read_all(sources: Sequence[DatasetSource], *, seed: int = 0, report: ReadReport | None = None) -> list[Sample]:
    """Read every source in order and concatenate their samples (each repeated as its source says)."""
    samples: list[Sample] = []
    for source in sources:
        samples.extend(read_samples(source, seed=seed, report=report))
    return samples


def read_samples(source: DatasetSource, *, seed: int = 0, report: ReadReport | None = None) -> list[Sample]:
    """Read one dataset (or every dataset of an InternVL meta file) into Samples, repeats applied.

    Args:
        source: where the data is and how to read it.
        seed: makes fractional repeats deterministic; the same seed keeps the same rows.
        report: collects bad rows (which are skipped); without one the first bad row raises.

    Raises:
        DataFormatError: the file is missing, does not parse, has an unknown format, or (without a
            report) a row is bad.
    """
    path = checked_path(source)
    return read_source(path, maybe_meta(path, source.format), source, read_annotation, seed=seed, report=report)


def checked_path(source: DatasetSource) -> str:
    """The source's path, once its format and repeat are valid and the file exists (DataFormatError otherwise)."""
    path = os.fspath(source.path)
    if source.format not in FORMATS:
        raise DataFormatError(f"{path}: unknown format {source.format!r}: use one of {', '.join(FORMATS)}")
    check_repeat(source.repeat, path)
    if not os.path.exists(path):
        raise DataFormatError(f"{path}: file not found (data.datasets[].path)")
    return path


def read_source(path: str, meta: Mapping | None, source: DatasetSource, read_file: Callable[..., list], *,
                seed: int, report: ReadReport | None, entry_format: str = "auto") -> list:
    """What `read_file` reads from the annotation file at `path`, or from every dataset of the InternVL `meta`
    read from it (each as `entry_format`), repeats applied.

    `read_file(path, fmt, image_root=, dataset=, max_tiles=, report=)` reads one annotation file: Samples
    (`read_annotation`) or preference pairs (`vlft.data.readers.pairs`).
    """
    if meta is not None:
        items: list = []
        for entry in meta_entries(path, meta, source):
            part = read_file(entry.annotation, entry_format, image_root=entry.image_root, dataset=entry.name,
                             max_tiles=entry.max_tiles, report=report)
            items.extend(repeat(part, entry.repeat * source.repeat, seed=seed, key=entry.name))
        return items
    name = source.name or stem(path)
    items = read_file(path, source.format, image_root=image_root(source.image_root, path), dataset=name,
                      max_tiles=source.max_tiles, report=report)
    return repeat(items, source.repeat, seed=seed, key=name)
