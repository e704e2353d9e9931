"""Folders written by `datasets`' save_to_disk (a Dataset, or a DatasetDict whose 'train' split is read)."""

from __future__ import annotations

import os

from vlft.data.readers.hf_datasets import load_rows

DESCRIBED = "a directory written by save_to_disk"


def recognises(path: str) -> bool:
    return os.path.isdir(path)


def read_rows(path: str) -> tuple[list, list[str]]:
    return load_rows(path, "disk")
