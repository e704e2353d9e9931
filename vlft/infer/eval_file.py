"""The `vlft eval` file: its questions as EvalItems (a prompt Sample and its reference), images checked.

The file is JSON (a list) or JSONL; each row is one question, in either shape:

1. a conversation (LLaVA ``conversations`` or ShareGPT ``messages``, with ``image``/``images``): the prompt is
   every turn before the last assistant turn; the reference is ``answer`` when the row has one, else that
   last assistant turn.
2. a multiple-choice row: ``{"id", "image", "question", "choices": [...], "answer", "category"}``; the prompt
   is the question, the options lettered A., B., ... and "Answer with the option's letter from the given
   choices directly." (what `recipes/food/convert_foodieqa.py` and the demo write, as shape 1).

Optional keys in both: ``choices`` (the options, in order: makes the row multiple-choice), ``answer`` (a
letter "B", a 0-based index 1, or the option text), ``category`` (accuracy is also reported per category).

Conversation rows are read by the dataset readers (`vlft.data.formats`). This reader sits in `vlft.infer`,
not beside them, because an answer's letters come from `vlft.infer.answers` and vlft.data imports nothing
from vlft.infer.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vlft.data.formats import DataFormatError, DatasetSource, read_samples, read_text
from vlft.data.readers.json_rows import json_lines
from vlft.data.record import IMAGE_PLACEHOLDER, Sample, Turn
from vlft.data.tiling import ImageError
from vlft.errors import DataError
from vlft.infer.answers import LETTERS, multiple_choice_prompt, reference_index


@dataclass(frozen=True)
class EvalItem:
    """One question: the prompt (a Sample whose turns end with the user's question) and its reference."""

    sample: Sample
    reference: str                   # the reference answer as written (a letter for multiple choice)
    choices: tuple[str, ...] = ()    # empty: open-ended closed-set VQA
    answer_index: int | None = None  # multiple choice: the right option
    category: str | None = None

    @property
    def question(self) -> str:
        return self.sample.turns[-1].text.replace(IMAGE_PLACEHOLDER, "").strip()



def read_eval_file(path: str | Path, image_root: str | Path | None = None) -> list[EvalItem]:
    """Every question of an eval file (see the module docstring); a row without a reference is an error."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: eval file not found")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".json", ".jsonl"):
        raise DataError(f"{path}: an eval file must be .json or .jsonl")
    rows = _read_rows(path, suffix)
    if not rows:
        raise DataError(f"{path}: no questions in the file")
    first = rows[0] if isinstance(rows[0], dict) else {}
    if "conversations" in first or "messages" in first:
        try:
            samples = read_samples(DatasetSource(path=path, image_root=os.fspath(image_root) if image_root else None))
        except DataFormatError as exc:
            raise DataError(str(exc)) from None
        items = [_conversation_item(s) for s in samples]
    else:
        root = os.path.abspath(image_root) if image_root else os.path.dirname(os.path.abspath(path))
        items = [_choice_row_item(row, index, path, root) for index, row in enumerate(rows)]
    return items


def _read_rows(path: str, suffix: str) -> list:
    text = read_text(path)
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    return json_lines(path, text, hint="; an eval file is a JSON list or JSON lines")


def _conversation_item(sample: Sample) -> EvalItem:
    turns = list(sample.turns)
    reference = sample.extra.get("answer")
    if turns and turns[-1].role == "assistant":
        last = turns.pop()
        reference = last.text if reference is None else reference
    if reference is None:
        raise DataError(f"{sample.where}: no reference answer: add an 'answer' key, or end the conversation "
                        "with the assistant's answer")
    if not turns or turns[-1].role != "user":
        raise DataError(f"{sample.where}: the question (a user turn) must come right before the answer")
    prompt = Sample(id=sample.id, source=sample.source, dataset=sample.dataset, turns=tuple(turns),
                    images=sample.images, max_tiles=sample.max_tiles)
    return _item(prompt, reference, sample.extra.get("choices"), sample.extra.get("category"))


def _choice_row_item(row, index: int, path: str, root: str) -> EvalItem:
    where = f"{path}:{row.get('id', index) if isinstance(row, dict) else index}"
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be an object with 'question', 'choices', 'answer' and 'image'")
    if not isinstance(row.get("question"), str):
        raise DataError(f"{where}: no 'question' (nor 'conversations'/'messages'); see `vlft eval --help` "
                        "for the eval file layout")
    if row.get("answer") is None:
        raise DataError(f"{where}: no reference answer: add 'answer' (a letter, a 0-based index or the option text)")
    choices = row.get("choices")
    images = row.get("images") if row.get("image") is None else [row["image"]]
    images = [images] if isinstance(images, str) else list(images or [])
    if not all(isinstance(p, str) and p for p in images):
        raise DataError(f"{where}: 'image' must be a path (or 'images' a list of paths)")
    text = multiple_choice_prompt(row["question"], list(choices)) if isinstance(choices, list) else row["question"]
    user = IMAGE_PLACEHOLDER + "\n" if images else ""
    sample = Sample(id=str(row.get("id", index)), source=path, dataset=Path(path).stem,
                    turns=(Turn("user", user * len(images) + text),),
                    images=tuple(p if os.path.isabs(p) else os.path.normpath(os.path.join(root, p)) for p in images))
    return _item(sample, row["answer"], choices, row.get("category"))


def _item(sample: Sample, reference, choices, category) -> EvalItem:
    if choices is None:
        if not isinstance(reference, str):
            raise DataError(f"{sample.where}: answer {reference!r} without 'choices' must be the answer text")
        return EvalItem(sample, reference, category=None if category is None else str(category))
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{sample.where}: 'choices' must be a list of at least two option texts")
    if len(choices) > len(LETTERS):
        raise DataError(f"{sample.where}: {len(choices)} choices; at most {len(LETTERS)} can be lettered")
    try:
        index = reference_index(reference, choices)
    except ValueError as exc:
        raise DataError(f"{sample.where}: {exc}") from None
    return EvalItem(sample, LETTERS[index], tuple(choices), index, None if category is None else str(category))


def check_images(items: list[EvalItem]) -> None:
    """Fail before any model loads when an image is missing or unreadable (the message names it)."""
    seen = set()
    for item in items:
        for path in item.sample.images:
            if path in seen:
                continue
            seen.add(path)
            try:
                with Image.open(path) as image:
                    image.size  # noqa: B018 - the header is enough here
            except FileNotFoundError:
                raise ImageError(f"{item.sample.where}: image not found: {path}") from None
            except Exception as exc:  # PIL raises several types for a file that is not an image
                raise ImageError(f"{item.sample.where}: cannot read image {path}: {exc}") from None
