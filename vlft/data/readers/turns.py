"""Turns made trainable as LLaVA, InternVL and XTuner make them: leading assistant turns dropped, user runs merged."""

from __future__ import annotations

from vlft.data.problems import LEADING_ASSISTANT, USER_TURNS_MERGED
from vlft.data.record import Turn


def normalize_turns(turns: tuple[Turn, ...]) -> tuple[tuple[Turn, ...], list[tuple[str, str]]]:
    """Turns as the LLaVA, InternVL and XTuner readers train them, and (kind, note) for each change made.

    - Assistant turns before the first user turn are dropped (a greeting nobody asked for): LLaVA's and
      InternVL's `preprocess` and XTuner's `llava_map_fn` all skip them and train the rest.
    - Two user turns in a row become one, joined by a newline (XTuner concatenates them too): the template
      then alternates as at inference, and no text or image is lost. LLaMA-Factory drops such a row instead;
      keeping it is the choice that loses nothing, and check-data lists each one.

    >>> turns, notes = normalize_turns((Turn("assistant", "Hi!"), Turn("user", "a"), Turn("user", "b"),
    ...                                 Turn("assistant", "c")))
    >>> [t.text for t in turns], [kind for kind, _ in notes]
    (['a\\nb', 'c'], ['leading assistant turn dropped', 'user turns merged'])
    """
    notes: list[tuple[str, str]] = []
    out = list(turns)
    first = 1 if out and out[0].role == "system" else 0
    leading = 0
    while first + leading < len(out) and out[first + leading].role == "assistant":
        leading += 1
    if leading:  # with no user turn at all nothing is left, and the sample is dropped for having no answer
        del out[first:first + leading]
        notes.append((LEADING_ASSISTANT, f"starts with {leading} assistant turn(s) before any user turn: "
                                         "dropped those turns"))
    merged: list[Turn] = []
    runs = 0
    for turn in out:
        if merged and turn.role == "user" and merged[-1].role == "user":
            merged[-1] = Turn("user", f"{merged[-1].text}\n{turn.text}")
            runs += 1
        else:
            merged.append(turn)
    if runs:
        notes.append((USER_TURNS_MERGED, f"{runs} user turn(s) follow another user turn: merged "
                                         "each into the one before (joined by a newline)"))
    return tuple(merged), notes
