"""JSON (a list of samples, or JSON lines in a .json file) and JSONL annotation files."""

from __future__ import annotations

import json
import os

from vlft.data.readers.hf_datasets import load_rows
from vlft.data.readers.source import DataFormatError
from vlft.data.readers.text import read_text

DESCRIBED = "a .json or .jsonl file (or an InternVL meta .json)"
_SUFFIXES = (".json", ".jsonl")


def recognises(path: str) -> bool:
    return not os.path.isdir(path) and os.path.splitext(path)[1].lower() in _SUFFIXES


def read_rows(path: str) -> tuple[list, list[str]]:
    """The rows through `datasets` (see `vlft.data.readers.containers`), or through the json module where datasets
    cannot make one table of them."""
    try:
        return load_rows(path, "json")
    except DataFormatError:
        # datasets cannot make one table of some valid files: a row that is not an object, a blank line in
        # a JSONL whose rows mix types, an empty file (StopIteration), and before datasets 4.x (no Json
        # feature) a key that is a string in one row and a list in another ("image": "a.jpg" vs [...]).
        # The json module reads them all, and its errors carry a line number.
        rows = _via_json(path, os.path.splitext(path)[1].lower())
        columns: dict[str, None] = {}
        for row in rows:
            if isinstance(row, dict):
                columns.update(dict.fromkeys(row))
        return rows, list(columns)


def _via_json(path: str, suffix: str) -> list:
    text = read_text(path)
    if suffix == ".json":
        try:
            data = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":
                raise DataFormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
            data = None  # one object after another: JSON lines in a .json file
        if data is not None:
            if not isinstance(data, list):
                raise DataFormatError(f"{path}: the top level is a {type(data).__name__}, expected a list of samples")
            return data
    return json_lines(path, text)


def json_lines(path: str, text: str, *, hint: str = "") -> list:
    """Each non-blank line of `text` (the file at `path`) parsed as JSON; a bad line is a DataFormatError
    naming its number, then `hint`."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}: line {number} is not valid JSON ({e.msg}, column {e.colno}){hint}"
                                      ) from None
    return rows
