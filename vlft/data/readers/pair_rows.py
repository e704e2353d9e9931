"""What the preference formats share: an answer given as text or as assistant message(s), and the checks that
make a prompt and two answers one usable pair (one `PairRowError` line naming what is wrong otherwise)."""

from __future__ import annotations

from collections.abc import Mapping

from vlft.data.problems import EMPTY_ANSWER, IDENTICAL_ANSWERS, MALFORMED, NO_REJECTED
from vlft.data.readers.conversation import RowError, parse_row
from vlft.data.readers.source import DataFormatError
from vlft.data.record import IMAGE_PLACEHOLDER, Turn

#: A row with one of these keys is a preference pair, whatever holds its prompt.
REJECTED_KEYS = ("rejected", "rejected_response")


class PairRowError(RowError):
    """A bad preference row; `kind` names it as `vlft.data.problems` does (check-data groups by it)."""

    def __init__(self, message: str, kind: str = MALFORMED):
        super().__init__(message)
        self.kind = kind


def is_pair_row(first_row: Mapping) -> bool:
    """Does a row (or a file's columns) hold a rejected answer, so a preference pair rather than a conversation?"""
    return any(key in first_row for key in REJECTED_KEYS)


def answer_text(value, key: str) -> str:
    """The text of an answer given as a string, an assistant message ({"role", "content"} or {"from", "value"},
    content blocks allowed) or a list holding one such message (TRL's conversational preference rows)."""
    if isinstance(value, str):
        return value
    if value is None:
        raise PairRowError(f"no '{key}' answer", NO_REJECTED if key in REJECTED_KEYS else MALFORMED)
    messages = [value] if isinstance(value, Mapping) else value
    if not isinstance(messages, list) or not messages:
        raise PairRowError(f"'{key}' is {value!r}, expected the answer text or an assistant message")
    turns, _ = parse_row({key: messages}, key)
    others = sorted({t.role for t in turns if t.role != "assistant"})
    if others:
        raise PairRowError(f"'{key}' has a {others[0]} message: it holds the assistant's answer only "
                           "(the prompt goes in the conversation)")
    if len(turns) > 1:
        raise PairRowError(f"'{key}' holds {len(turns)} assistant messages, expected one answer")
    return turns[0].text


def checked_pair(prompt: tuple[Turn, ...], chosen: str, rejected: str) -> tuple[tuple[Turn, ...], str, str]:
    """The prompt (ending with a user turn) and both answers, or PairRowError saying why they make no pair."""
    if not any(t.role == "user" for t in prompt):
        raise PairRowError("no user turn: the prompt the answers reply to is missing")
    if prompt[-1].role != "user":
        raise PairRowError(f"the conversation ends with {'an' if prompt[-1].role == 'assistant' else 'a'} "
                           f"{prompt[-1].role} turn: 'chosen' and 'rejected' answer its last user turn, "
                           "so drop the turns after it")
    for key, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise PairRowError(f"empty '{key}' answer", EMPTY_ANSWER)
        if IMAGE_PLACEHOLDER in text:
            raise PairRowError(f"'{key}' contains '{IMAGE_PLACEHOLDER}': images go in the prompt's user turns")
    if chosen.strip() == rejected.strip():
        raise PairRowError("'chosen' and 'rejected' are the same answer: the pair teaches nothing",
                           IDENTICAL_ANSWERS)
    return prompt, chosen, rejected


def not_conversations(path: str, fmt: str):
    """The error for a preference file read as SFT conversations (its format's `turns_key`)."""
    return DataFormatError(f"{path}: a preference file (format {fmt!r}: 'chosen'/'rejected' answers), not SFT "
                           "conversations: train it with schedule.objective='dpo' (or 'mpo')")
