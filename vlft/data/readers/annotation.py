"""An annotation file (a list of samples in one of the row formats) into Samples, bad rows reported or raised."""

from __future__ import annotations

from vlft.data.problems import IMAGE_OUTSIDE_ROOT
from vlft.data.readers.conversation import RowError, parse_row
from vlft.data.readers.paths import is_absolute, is_inside, resolve
from vlft.data.readers.containers import read_rows
from vlft.data.readers.sniff import detect_format, format_named
from vlft.data.readers.source import DataFormatError, ReadReport, ReadWarning
from vlft.data.readers.turns import normalize_turns
from vlft.data.record import Sample

# Row keys the readers consume; every other non-null key goes to Sample.extra (answers, choices, category...).
_CONSUMED_KEYS = frozenset({"id", "image", "images", "conversations", "messages"})


def read_annotation(path: str, fmt: str, *, image_root: str, dataset: str, max_tiles: int | None,
                    report: ReadReport | None) -> list[Sample]:
    """Every row of `path` read as format `fmt` ("auto": told by the columns) into a Sample."""
    rows, columns = read_rows(path)
    if not rows:
        return []
    if fmt == "auto":
        try:
            fmt = detect_format(dict.fromkeys(columns))
        except DataFormatError as e:
            raise DataFormatError(f"{path}: {e}") from None
    turns_key = format_named(fmt).turns_key(path, columns)
    samples = []
    for index, row in enumerate(rows):
        sample_id = str(index)
        try:
            if not isinstance(row, dict):
                raise RowError(f"row is {type(row).__name__}, expected an object with '{turns_key}'")
            if row.get("id") is not None:
                sample_id = str(row["id"])
            turns, images = parse_row(row, turns_key)
        except RowError as e:
            line = f"{path}:{sample_id}: {e}"
            if report is None:
                raise DataFormatError(line) from None
            report.problems.append(line)
            continue
        turns, notes = normalize_turns(turns)
        resolved = resolved_images(images, image_root, f"{path}:{sample_id}", notes, report)
        extra = {k: v for k, v in row.items() if v is not None and k not in _CONSUMED_KEYS}
        samples.append(Sample(id=sample_id, source=path, dataset=dataset, turns=turns, images=resolved,
                              max_tiles=max_tiles, extra=extra))
    return samples


def resolved_images(images: list[str], image_root: str, where: str, notes: list[tuple[str, str]],
                    report: ReadReport | None) -> tuple[str, ...]:
    """The row's image paths resolved in `image_root`; the row's `normalize_turns` notes and each path that
    leaves the root go to the report's warnings (the row is kept)."""
    resolved = tuple(resolve(p, image_root) for p in images)
    if report is not None:
        report.warnings += [ReadWarning(kind, where, note) for kind, note in notes]
        for given, full in zip(images, resolved):
            if not is_inside(full, image_root) and not is_absolute(given):
                # Legitimate in a shared tree (a sibling folder of images), a mistake more often.
                report.warnings.append(ReadWarning(IMAGE_OUTSIDE_ROOT, where, (
                    f"image path {given!r} leaves the image root {image_root} (it resolves to {full}); kept")))
    return resolved
