"""An annotation file's rows and column names, read by the one container reader that recognises the file.

Through `datasets` where it can, which unifies the schema across rows: a key missing from a row comes back
as None (so a missing key and a null read the same), and nested dicts (turns, content blocks) gain the
other rows' keys as None.
"""

from __future__ import annotations

import os

from vlft.data.readers import json_rows, parquet, saved_dataset
from vlft.data.readers.source import DataFormatError

# Each says whether it recognises a path (they never overlap) and reads it.
CONTAINERS = (json_rows, parquet, saved_dataset)


def read_rows(path: str) -> tuple[list, list[str]]:
    """All rows of an annotation file or save_to_disk directory as Python objects, plus the column names."""
    for container in CONTAINERS:
        if container.recognises(path):
            return container.read_rows(path)
    suffix = os.path.splitext(path)[1].lower()
    kinds = [c.DESCRIBED for c in CONTAINERS]
    raise DataFormatError(f"{path}: unsupported file type {suffix or '(none)'!r}: give "
                          f"{', '.join(kinds[:-1])}, or {kinds[-1]}")
