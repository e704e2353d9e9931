"""InternVL MPO's preference JSONL (MMPR): ``question``, ``chosen``, ``rejected`` and ``image`` (one path, a list,
or none for a text-only row), each image relative to its dataset's root; usually listed by an InternVL meta."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vlft.data.readers.conversation import RowError, parse_row
from vlft.data.readers.pair_rows import answer_text, is_pair_row, not_conversations
from vlft.data.record import Turn

NAME = "internvl_mpo"
DESCRIBED = "'question' + 'chosen' + 'rejected' (InternVL MPO)"
CONSUMED_KEYS = frozenset({"question", "chosen", "rejected"})


def recognises(first_row: Mapping) -> bool:
    return is_pair_row(first_row) and "question" in first_row and not {"messages", "conversations"} & set(first_row)


def turns_key(path: str, columns: Sequence[str]) -> str:
    raise not_conversations(path, NAME)


def parse_pair(row: Mapping) -> tuple[tuple[Turn, ...], list[str], str, str]:
    """(the question as the one user turn, image paths in placeholder order, chosen, rejected), or RowError.

    A question without '<image>' gets one per image in front, as InternVL's SFT and MPO datasets do.
    """
    question = row.get("question")
    if not isinstance(question, str):
        raise RowError(f"'question' is {question!r}, expected the prompt text")
    image = row.get("image")
    if image == "" or image == []:  # InternVL reads a row with an empty image as text-only
        image = None
    turns, images = parse_row({"conversations": [{"from": "human", "value": question}], "image": image}, "conversations")
    return turns, images, answer_text(row.get("chosen"), "chosen"), answer_text(row.get("rejected"), "rejected")
