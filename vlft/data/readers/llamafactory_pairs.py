"""LLaMA-Factory's preference rows (a ``ranking: true`` ShareGPT dataset): ``conversations`` ending with the
user turn, ``chosen`` and ``rejected`` assistant messages ({"from": "gpt", "value": ...}), and ``images``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vlft.data.readers.conversation import parse_row
from vlft.data.readers.pair_rows import answer_text, is_pair_row, not_conversations
from vlft.data.record import Turn

NAME = "llamafactory_pairs"
DESCRIBED = "'conversations' + 'chosen' + 'rejected' (LLaMA-Factory preference pairs)"
CONSUMED_KEYS = frozenset({"conversations", "chosen", "rejected"})


def recognises(first_row: Mapping) -> bool:
    return is_pair_row(first_row) and "conversations" in first_row and "messages" not in first_row


def turns_key(path: str, columns: Sequence[str]) -> str:
    raise not_conversations(path, NAME)


def parse_pair(row: Mapping) -> tuple[tuple[Turn, ...], list[str], str, str]:
    """(turns before the answers, image paths in placeholder order, chosen, rejected) of one row, or RowError."""
    turns, images = parse_row(row, "conversations")
    return turns, images, answer_text(row.get("chosen"), "chosen"), answer_text(row.get("rejected"), "rejected")
