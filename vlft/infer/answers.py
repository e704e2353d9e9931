"""Read a model's free-text reply as a choice (letter or option text), and a file's reference answer.

    >>> parse_choice("(B)", ["rice", "dumplings"])
    1
    >>> parse_choice("B. dumplings", ["rice", "dumplings"])
    1
    >>> parse_choice("They are dumplings.", ["rice", "dumplings"])
    1
    >>> parse_choice("no idea", ["rice", "dumplings"]) is None
    True
"""
from __future__ import annotations

import re
import string
import unicodedata

LETTERS = string.ascii_uppercase
INSTRUCTION = "Answer with the option's letter from the given choices directly."

# "Answer: B", "The answer is (B)", "I would select (B" -> what follows
_LEAD_IN = re.compile(r"^(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:：]?\s*|"
                      r"^i\s+(?:would\s+)?(?:select|choose|pick)\s*", re.IGNORECASE)
# a letter standing alone at the start: "B", "(B)", "B.", "B)", "B:", "B,", "[B]", "（B）"
_LEADING_LETTER = re.compile(r"^[\(\[（]?\s*([A-Za-z])\s*(?:[\)\]）.:,、]|$)(.*)$", re.DOTALL)


def multiple_choice_prompt(question: str, choices: list[str]) -> str:
    """The prompt vlft builds for a multiple-choice row (LLaVA's MMBench style): question, options, instruction.

    >>> print(multiple_choice_prompt("Which dish is this?", ["rice", "dumplings"]))
    Which dish is this?
    A. rice
    B. dumplings
    Answer with the option's letter from the given choices directly.
    """
    if len(choices) > len(LETTERS):
        raise ValueError(f"{len(choices)} choices; at most {len(LETTERS)} can be lettered")
    options = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))
    return f"{question.strip()}\n{options}\n{INSTRUCTION}"


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed (for comparing option texts and short answers)."""
    text = text.lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return " ".join(text.split())


def parse_choice(reply: str, choices: list[str]) -> int | None:
    """The index of the option a reply names, or None when it names none (or several).

    Accepted: the letter alone or bracketed ("B", "(B)", "B."), the letter followed by text ("B. dumplings":
    the letter wins), an answer lead-in ("Answer: B"), or the option's text ("dumplings", "It is dumplings.")
    when exactly one option's text appears in the reply (the longest wins when one contains another).
    """
    text = reply.strip()
    text = _LEAD_IN.sub("", text, count=1).strip()
    n = len(choices)
    normal_choices = [normalize(c) for c in choices]
    whole = normalize(text)
    if whole and whole in normal_choices and normal_choices.count(whole) == 1:
        return normal_choices.index(whole)
    found = _LEADING_LETTER.match(text)
    if found:
        index = LETTERS.index(found.group(1).upper())
        if index < n:
            return index
    padded = f" {whole} "
    hits = [i for i, c in enumerate(normal_choices) if c and f" {c} " in padded]
    hits = [i for i in hits if not any(normal_choices[i] != normal_choices[j] and
                                       f" {normal_choices[i]} " in f" {normal_choices[j]} " for j in hits)]
    return hits[0] if len(hits) == 1 else None


def reference_index(answer, choices: list[str]) -> int:
    """A file's reference answer as an option index: a letter ("B", "(B)"), a 0-based index (1 or "1"), or
    the option's text. Raises ValueError naming what it got.

    >>> reference_index("B", ["x", "y"]), reference_index(1, ["x", "y"]), reference_index("y", ["x", "y"])
    (1, 1, 1)
    """
    n = len(choices)
    if isinstance(answer, bool):
        raise ValueError(f"answer {answer!r} is not a letter, an index or an option")
    if isinstance(answer, int):
        if 0 <= answer < n:
            return answer
        raise ValueError(f"answer index {answer} is out of range for {n} choices (0-based)")
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"answer {answer!r} is not a letter, an index or an option")
    text = answer.strip()
    normal_choices = [normalize(c) for c in choices]
    if normalize(text) in normal_choices:  # the option's text wins over reading "1" as an index
        return normal_choices.index(normalize(text))
    found = re.fullmatch(r"[\(\[（]?\s*([A-Za-z])\s*[\)\]）.]?", text)
    if found and LETTERS.index(found.group(1).upper()) < n:
        return LETTERS.index(found.group(1).upper())
    if text.isdigit() and int(text) < n:
        return int(text)
    raise ValueError(f"answer {answer!r} is neither a letter A-{LETTERS[n - 1]}, a 0-based index below {n}, "
                     "nor one of the choices")


def matches_reference(reply: str, reference: str) -> bool:
    """Open-ended closed-set VQA: the normalised reply equals the normalised reference ("Yes." == "yes")."""
    return bool(normalize(reply)) and normalize(reply) == normalize(reference)
