"""A config's datasets (annotation files, or InternVL meta files of several) into Samples, repeats applied.

Reading resolves image paths but never opens an image. A file that cannot be read at all raises
`DataFormatError`; a row that is structurally bad is skipped and written to `ReadReport.problems` as one
``file:sample-id: what is wrong`` line when a report is given, and raised otherwise. A row that is read but
looks wrong (see `normalize_turns`, or an image path leaving image_root) is kept and listed in
`ReadReport.warnings`. Text files are UTF-8 (a byte-order mark is allowed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

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
    path = os.fspath(source.path)
    if source.format not in FORMATS:
        raise DataFormatError(f"{path}: unknown format {source.format!r}: use one of {', '.join(FORMATS)}")
    check_repeat(source.repeat, path)
    if not os.path.exists(path):
        raise DataFormatError(f"{path}: file not found (data.datasets[].path)")

    meta = maybe_meta(path, source.format)
    if meta is not None:
        return _read_meta(path, meta, source, seed=seed, report=report)

    name = source.name or stem(path)
    samples = read_annotation(path, source.format, image_root=image_root(source.image_root, path), dataset=name,
                              max_tiles=source.max_tiles, report=report)
    return repeat(samples, source.repeat, seed=seed, key=name)


def _read_meta(path: str, meta: Mapping, source: DatasetSource, *, seed: int,
               report: ReadReport | None) -> list[Sample]:
    samples: list[Sample] = []
    for entry in meta_entries(path, meta, source):
        part = read_annotation(entry.annotation, "auto", image_root=entry.image_root, dataset=entry.name,
                               max_tiles=entry.max_tiles, report=report)
        samples.extend(repeat(part, entry.repeat * source.repeat, seed=seed, key=entry.name))
    return samples
