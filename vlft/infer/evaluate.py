"""`vlft eval`: accuracy of one or more models on a closed-set VQA / multiple-choice file.

The eval file is JSON (a list) or JSONL; each row is one question, in either shape:

1. a conversation (LLaVA ``conversations`` or ShareGPT ``messages``, with ``image``/``images``): the prompt is
   every turn before the last assistant turn; the reference is ``answer`` when the row has one, else that
   last assistant turn.
2. a multiple-choice row: ``{"id", "image", "question", "choices": [...], "answer", "category"}``; the prompt
   is the question, the options lettered A., B., ... and "Answer with the option's letter from the given
   choices directly." (what `recipes/food/convert_foodieqa.py` and the demo write, as shape 1).

Optional keys in both: ``choices`` (the options, in order: makes the row multiple-choice), ``answer`` (a
letter "B", a 0-based index 1, or the option text), ``category`` (accuracy is also reported per category).
A multiple-choice reply is read as a letter or an option text ("B", "(B)", "B. dumplings", "dumplings");
one that names no option counts as wrong and is reported as unparseable. Without ``choices`` the reply
must equal the reference after normalisation (case, punctuation).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vlft.data.formats import DataFormatError, DatasetSource, read_samples, read_text
from vlft.data.record import IMAGE_PLACEHOLDER, Sample, Turn
from vlft.errors import ConfigError, DataError
from vlft.infer._generate import (GenerationSettings, PromptTooLong, check_prompt_length, check_template_flag,
                                  generate_batch, prompt_ids, prompt_inputs)
from vlft.infer.answers import LETTERS, matches_reference, multiple_choice_prompt, parse_choice, reference_index


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


@dataclass
class Prediction:
    item: EvalItem
    reply: str
    choice: int | None     # the option the reply names (multiple choice), None if none
    correct: bool
    unparseable: bool

    def record(self, model: str) -> dict:
        item = self.item
        return {"model": model, "id": item.sample.id, "category": item.category, "question": item.question,
                "images": list(item.sample.images), "prediction": self.reply,
                "parsed": LETTERS[self.choice] if self.choice is not None else None,
                "answer": LETTERS[item.answer_index] if item.answer_index is not None else item.reference,
                "correct": self.correct, "unparseable": self.unparseable}


@dataclass
class EvalReport:
    """One model's result on one file."""

    model: str
    predictions: list[Prediction] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.predictions)

    @property
    def correct(self) -> int:
        return sum(p.correct for p in self.predictions)

    @property
    def unparseable(self) -> int:
        return sum(p.unparseable for p in self.predictions)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def by_category(self) -> dict[str, tuple[int, int]]:
        """{category: (correct, total)} in first-seen order; rows without a category are left out."""
        out: dict[str, list[int]] = {}
        for p in self.predictions:
            if p.item.category is not None:
                counts = out.setdefault(p.item.category, [0, 0])
                counts[0] += p.correct
                counts[1] += 1
        return {k: (c, n) for k, (c, n) in out.items()}


# ------------------------------------------------------------------------------------------- reading

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
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {number} is not valid JSON ({exc.msg}); an eval file is a JSON "
                                "list or JSON lines") from None
    return rows


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
    from PIL import Image

    from vlft.data.tiling import ImageError

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


# ------------------------------------------------------------------------------------------- scoring

def score(item: EvalItem, reply: str) -> Prediction:
    if item.choices:
        choice = parse_choice(reply, list(item.choices))
        return Prediction(item, reply, choice, choice == item.answer_index, choice is None)
    return Prediction(item, reply, None, matches_reference(reply, item.reference), not reply.strip())


def evaluate_model(model, pipeline, items: list[EvalItem], *, name: str, batch_size: int = 8,
                   max_new_tokens: int = 16, progress: bool = True) -> EvalReport:
    """Generate a reply per item (greedy, batched by prompt length) and score it."""
    from tqdm import tqdm

    check_batch_size(batch_size)
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    ids = [prompt_ids(pipeline, item.sample) for item in items]  # pixels only per batch (memory)
    check_prompt_lengths(model, items, ids, settings)
    order = sorted(range(len(items)), key=lambda i: len(ids[i]))  # similar lengths share a batch: less padding
    replies: list[str] = [""] * len(items)
    with tqdm(total=len(items), desc=f"eval {name}", unit="q", file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            prompts = [prompt_inputs(pipeline, items[i].sample, ids[i]) for i in chunk]
            for i, reply in zip(chunk, generate_batch(model, pipeline, prompts, settings)):
                replies[i] = reply
            bar.update(len(chunk))
    return EvalReport(name, [score(item, reply) for item, reply in zip(items, replies)])


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")


def check_prompt_lengths(model, items: list[EvalItem], ids: list[list[int]], settings: GenerationSettings) -> None:
    """Refuse the file, before any generation, when a question does not fit the model's context.

    An error rather than a skip: an accuracy over fewer questions than the file holds would not compare with
    another model's (or a later run's) on the same file.
    """
    too_long = []
    for item, prompt in zip(items, ids):
        try:
            check_prompt_length(model, len(prompt), settings, where=item.sample.where)
        except PromptTooLong as exc:
            too_long.append(exc)
    if too_long:
        others = f" ({len(too_long) - 1} more questions too long)" if len(too_long) > 1 else ""
        raise PromptTooLong(f"{too_long[0]}{others}")


def format_table(reports: list[EvalReport], title: str = "") -> str:
    """Accuracy per model (overall, per category, unparseable); two models get a before/after/change table."""
    items = reports[0].predictions
    chance = chance_level([p.item for p in items])
    head = title + (f" ({len(items)} questions" + (f", chance {chance:.1%})" if chance else ")"))
    names = _short_names([r.model for r in reports])
    two = len(reports) == 2
    width = max(12, *(len(n) + 2 for n in names))
    categories = list(dict.fromkeys(c for r in reports for c in r.by_category()))
    label_width = max([len("overall"), len("unparseable"), *(len(c) + 2 for c in categories)]) + 8

    def row(label, cells):
        return f"{label:<{label_width}}" + "".join(f"{c:>{width}}" for c in cells)

    lines = [head] if head.strip() else []
    if two:
        lines.append(row("", ["before", "after", "change"]))
    lines.append(row("", names + ([""] if two else [])))
    lines.append(row(f"overall ({len(items)})", _cells([r.accuracy for r in reports], two)))
    for category in categories:
        accs = []
        for r in reports:
            correct, total = r.by_category().get(category, (0, 0))
            accs.append(correct / total if total else 0.0)
        total = reports[0].by_category().get(category, (0, 0))[1]
        lines.append(row(f"  {category} ({total})", _cells(accs, two)))
    lines.append(row("unparseable", [str(r.unparseable) for r in reports] + ([""] if two else [])))
    return "\n".join(lines)


def _cells(accuracies: list[float], two: bool) -> list[str]:
    cells = [f"{a:.1%}" for a in accuracies]
    if two:
        cells.append(f"{(accuracies[1] - accuracies[0]) * 100:+.1f} pt")
    return cells


def _short_names(paths: list[str]) -> list[str]:
    names = [Path(p).name or str(p) for p in paths]
    if len(set(names)) < len(names):  # same folder name in several places: add the parent
        names = [str(Path(*Path(p).parts[-2:])) for p in paths]
    return names


def chance_level(items: list[EvalItem]) -> float | None:
    """Mean 1/len(choices) over a multiple-choice set (None when any row is open-ended)."""
    if not items or not all(item.choices for item in items):
        return None
    return sum(1 / len(item.choices) for item in items) / len(items)


def run_eval(models: list[str], data: str, *, image_root: str | None = None, out: str | None = None,
             batch_size: int = 8, max_new_tokens: int = 16, template: str | None = None, overwrite: bool = False,
             echo=None) -> list[EvalReport]:
    """Evaluate each model on `data`; print the table (before/after for two models); write `out` as JSONL.

    An existing `out` is refused unless `overwrite` (``--overwrite``); `out` is never the eval file itself.
    """
    import click

    from vlft.infer.loading import load_for_inference

    echo = echo or click.echo
    # every flag and the output path are checked before any model loads
    check_batch_size(batch_size)
    GenerationSettings(max_new_tokens=max_new_tokens)
    check_template_flag(template)
    if out is not None:
        check_predictions_path(out, data, overwrite=overwrite)
    items = read_eval_file(data, image_root)
    check_images(items)
    reports = []
    for path in models:
        model, pipeline = load_for_inference(path, template=template)
        reports.append(evaluate_model(model, pipeline, items, name=str(path), batch_size=batch_size,
                                      max_new_tokens=max_new_tokens))
        del model, pipeline  # one model in memory at a time
        _free_accelerator_memory()
    echo(format_table(reports, title=f"accuracy on {data}"))
    if out is not None:
        echo(f"predictions: {write_predictions(out, reports)}")
    return reports


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_predictions_path(out: str | Path, data: str | Path, *, overwrite: bool) -> Path:
    """Refuse an --out that would replace the eval file, a directory, or (without overwrite) any existing file."""
    out = Path(out)
    if _same_file(out, Path(data)):
        raise ConfigError(f"--out {out}: is the eval file --data {data}; writing the predictions there would replace "
                          "the questions; choose another --out")
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a directory; give a file path, e.g. {out / 'predictions.jsonl'}")
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out}: exists; pass --overwrite to replace it, or choose another --out")
    return out


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def write_predictions(path: str | Path, reports: list[EvalReport]) -> Path:
    """Every prediction of every model as one JSON line (model, id, category, prediction, parsed, answer...).

    Written to a temporary file beside `path` and renamed over it, so a crash or a full disk leaves the old
    file (or none), never half of one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise DataError(f"--out {path}: cannot write there ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for report in reports:
                for prediction in report.predictions:
                    f.write(json.dumps(prediction.record(report.model), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DataError(f"--out {path}: cannot write the predictions ({exc.strerror or exc}); "
                            f"{path} was left as it was") from None
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
