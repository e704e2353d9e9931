"""LLaVA-style rows: ``conversations`` of from/value turns, with ``image`` (one path or a list)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vlft.data.readers import sharegpt
from vlft.data.readers.pair_rows import is_pair_row

NAME = "llava"
DESCRIBED = "'conversations' (LLaVA)"


def recognises(first_row: Mapping) -> bool:
    # LLaMA-Factory's ShareGPT also has 'conversations': the rows with it that are not ShareGPT are LLaVA.
    return "conversations" in first_row and not sharegpt.recognises(first_row) and not is_pair_row(first_row)


def turns_key(path: str, columns: Sequence[str]) -> str:
    return "conversations"
