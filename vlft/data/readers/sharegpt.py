"""ShareGPT-style rows: OpenAI/ms-swift ``messages`` (role/content, content blocks), and LLaMA-Factory's
``conversations`` with ``images``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vlft.data.readers.pair_rows import is_pair_row

NAME = "sharegpt"
DESCRIBED = "'messages' + 'images' (ShareGPT)"


def recognises(first_row: Mapping) -> bool:
    keys = set(first_row)
    if is_pair_row(keys):  # a preference pair (see messages_pairs, llamafactory_pairs)
        return False
    return "messages" in keys or ("conversations" in keys and "images" in keys and "image" not in keys)


def turns_key(path: str, columns: Sequence[str]) -> str:
    """The key holding each row's turns (a row with the other key is read too: see `conversation`)."""
    return "messages" if "messages" in columns else "conversations"
