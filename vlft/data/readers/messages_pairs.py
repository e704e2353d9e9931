"""Preference rows in the messages style: ``messages`` (or TRL's ``prompt``) and ``images``, with ``chosen`` and
``rejected`` answers (text or assistant messages); ms-swift's ``rejected_response`` (the last assistant turn of
``messages`` is the chosen answer) is read too."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vlft.data.readers.conversation import RowError, parse_row
from vlft.data.readers.pair_rows import answer_text, is_pair_row, not_conversations
from vlft.data.record import Turn

NAME = "messages_pairs"
DESCRIBED = "'messages' + 'chosen' + 'rejected' (preference pairs)"
CONSUMED_KEYS = frozenset({"messages", "prompt", "chosen", "rejected", "rejected_response"})


def recognises(first_row: Mapping) -> bool:
    return is_pair_row(first_row) and ("messages" in first_row or "prompt" in first_row)


def turns_key(path: str, columns: Sequence[str]) -> str:
    raise not_conversations(path, NAME)


def parse_pair(row: Mapping) -> tuple[tuple[Turn, ...], list[str], str, str]:
    """(turns before the answers, image paths in placeholder order, chosen, rejected) of one row, or RowError."""
    if row.get("messages") is None and row.get("prompt") is not None:
        prompt = row["prompt"]
        if isinstance(prompt, str):  # TRL's standard (not conversational) prompt: one user turn
            prompt = [{"role": "user", "content": prompt}]
        row = {**row, "messages": prompt}
    turns, images = parse_row(row, "messages")
    if row.get("rejected") is None and row.get("rejected_response") is not None:
        # ms-swift: the conversation ends with the chosen answer, and rejected_response is the other one.
        if turns[-1].role != "assistant":
            raise RowError("has 'rejected_response' but 'messages' does not end with the chosen assistant answer")
        return turns[:-1], images, turns[-1].text, answer_text(row["rejected_response"], "rejected_response")
    return turns, images, answer_text(row.get("chosen"), "chosen"), answer_text(row.get("rejected"), "rejected")
