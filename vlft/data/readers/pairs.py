"""A config's preference datasets (LLaMA-Factory's, InternVL MPO's JSONL or an InternVL meta of them,
``messages`` + ``chosen``/``rejected``) into PreferencePairs, repeats applied.

What reading does with bad rows is what `vlft.data.readers.samples` does for conversations: a file that cannot
be read raises `DataFormatError`; a bad row (no rejected answer, the same answer twice, an empty answer,
images that do not match the placeholders...) is skipped and listed in `ReadReport.problems` as one
``file:pair-id: what is wrong`` line, its kind in `ReadReport.kinds`, when a report is given, and raised
otherwise. Nothing here opens an image.
"""

from __future__ import annotations

from collections.abc import Sequence

from vlft.data.readers import internvl_mpo
from vlft.data.readers.annotation import resolved_images
from vlft.data.readers.containers import read_rows
from vlft.data.readers.conversation import RowError
from vlft.data.readers.internvl_meta import maybe_meta
from vlft.data.readers.pair_rows import PairRowError, checked_pair
from vlft.data.readers.samples import checked_path, read_source
from vlft.data.readers.sniff import PAIR_FORMATS, detect_format, format_named, is_pair_format
from vlft.data.readers.source import DataFormatError, DatasetSource, ReadReport
from vlft.data.readers.turns import normalize_turns
from vlft.data.record import PreferencePair

_PAIR_NAMES = ", ".join(f.NAME for f in PAIR_FORMATS)


def read_preference_pairs(sources: Sequence[DatasetSource], *, seed: int = 0,
                          report: ReadReport | None = None) -> list[PreferencePair]:
    """Every pair of every source in order (each repeated as its source says): `read_all` for preference data."""
    pairs: list[PreferencePair] = []
    for source in sources:
        pairs.extend(read_pairs(source, seed=seed, report=report))
    return pairs


def read_pairs(source: DatasetSource, *, seed: int = 0, report: ReadReport | None = None) -> list[PreferencePair]:
    """One preference dataset (or every dataset of an InternVL meta file) into PreferencePairs, repeats applied.

    Raises:
        DataFormatError: the file is missing, does not parse, is not preference data, or (without a report)
            a row is bad.
    """
    path = checked_path(source)
    # An InternVL meta lists MPO JSONL files as it lists SFT ones: format='internvl_mpo' names the entries'.
    mpo = source.format == internvl_mpo.NAME
    meta = maybe_meta(path, "auto" if mpo else source.format)
    return read_source(path, meta, source, read_pair_annotation, seed=seed, report=report,
                       entry_format=source.format if mpo else "auto")


def read_pair_annotation(path: str, fmt: str, *, image_root: str, dataset: str, max_tiles: int | None,
                         report: ReadReport | None) -> list[PreferencePair]:
    """Every row of `path` read as preference format `fmt` ("auto": told by the columns) into a PreferencePair."""
    rows, columns = read_rows(path)
    if not rows:
        return []
    if fmt == "auto":
        try:
            fmt = detect_format(dict.fromkeys(columns))
        except DataFormatError as e:
            raise DataFormatError(f"{path}: {e}") from None
    if not is_pair_format(fmt):
        raise DataFormatError(f"{path}: format {fmt!r} holds SFT conversations, not preference pairs: give each "
                              f"row 'chosen' and 'rejected' answers (formats {_PAIR_NAMES})")
    reader = format_named(fmt)
    pairs = []
    for index, row in enumerate(rows):
        pair_id = str(index)
        try:
            if not isinstance(row, dict):
                raise RowError(f"row is {type(row).__name__}, expected an object ({reader.DESCRIBED})")
            if row.get("id") is not None:
                pair_id = str(row["id"])
            turns, images, chosen, rejected = reader.parse_pair(row)
            turns, notes = normalize_turns(turns)
            prompt, chosen, rejected = checked_pair(turns, chosen, rejected)
        except RowError as e:
            line = f"{path}:{pair_id}: {e}"
            if report is None:
                raise DataFormatError(line) from None
            report.problems.append(line)
            if isinstance(e, PairRowError):  # the others are named as the SFT readers' are (check-data)
                report.kinds[line] = e.kind
            continue
        where = f"{path}:{pair_id}"
        extra = {k: v for k, v in row.items() if v is not None and k not in reader.CONSUMED_KEYS
                 and k not in ("id", "image", "images")}
        pairs.append(PreferencePair(id=pair_id, source=path, dataset=dataset, prompt=prompt, chosen=chosen,
                                    rejected=rejected, images=resolved_images(images, image_root, where, notes, report),
                                    max_tiles=max_tiles, extra=extra))
    return pairs
