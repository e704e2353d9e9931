"""Parquet annotation files: one row per sample."""

from __future__ import annotations

import os

from vlft.data.readers.hf_datasets import load_rows

DESCRIBED = "a .parquet file"


def recognises(path: str) -> bool:
    return not os.path.isdir(path) and os.path.splitext(path)[1].lower() == ".parquet"


def read_rows(path: str) -> tuple[list, list[str]]:
    return load_rows(path, "parquet")
