"""Which format a row (or an InternVL meta object) is in: each format says whether it recognises it, and
the error when none does lists them."""

from __future__ import annotations

from collections.abc import Mapping

from vlft.data.readers import internvl_meta, internvl_mpo, llamafactory_pairs, llava, messages_pairs, sharegpt
from vlft.data.readers.source import DataFormatError

# Preference pairs (chosen/rejected answers to one prompt): what `vlft.data.readers.pairs` reads.
PAIR_FORMATS = (messages_pairs, llamafactory_pairs, internvl_mpo)
# What each recognises never overlaps; the order is the one the error lists them in.
ROW_FORMATS = (llava, sharegpt, internvl_meta, *PAIR_FORMATS)
FORMATS = ("auto", *(f.NAME for f in ROW_FORMATS))


def detect_format(first_row: Mapping) -> str:
    """Name the format of a row (or an InternVL meta object), one of FORMATS but "auto".

    Keys decide: a ``rejected`` (or ms-swift's ``rejected_response``) answer makes a preference pair, read
    as ``messages_pairs`` (with ``messages`` or TRL's ``prompt``), ``llamafactory_pairs`` (``conversations``)
    or ``internvl_mpo`` (``question``). Otherwise ``messages`` is ShareGPT/OpenAI style; ``conversations`` with
    ``images`` (and no ``image``) is LLaMA-Factory's ShareGPT; ``conversations`` otherwise is LLaVA; an object
    whose values are objects with an ``annotation`` is an InternVL meta.

    >>> detect_format({"id": "1", "image": "a.jpg", "conversations": []})
    'llava'
    >>> detect_format({"messages": [], "images": []})
    'sharegpt'
    >>> detect_format({"image": "a.jpg", "question": "", "chosen": "", "rejected": ""})
    'internvl_mpo'
    """
    for fmt in ROW_FORMATS:
        if fmt.recognises(first_row):
            return fmt.NAME
    shown = ", ".join(sorted(map(str, first_row))[:8]) or "none"
    described = [f.DESCRIBED for f in ROW_FORMATS]
    raise DataFormatError(f"cannot tell the dataset format from keys [{shown}]: expected "
                          f"{', '.join(described[:-1])} or {described[-1]}; or set data.datasets[].format")


def format_named(name: str):
    """The format module called `name` (one of FORMATS but "auto")."""
    return next(f for f in ROW_FORMATS if f.NAME == name)


def is_pair_format(name: str) -> bool:
    """Is the format called `name` one of preference pairs (chosen/rejected)?"""
    return any(f.NAME == name for f in PAIR_FORMATS)
