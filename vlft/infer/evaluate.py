"""`vlft eval`: accuracy of one or more models on a closed-set VQA / multiple-choice file.

The file and its two row shapes are read by `vlft.infer.eval_file`. A multiple-choice reply is read as a
letter or an option text ("B", "(B)", "B. dumplings", "dumplings"); one that names no option counts as wrong
and is reported as unparseable. Without ``choices`` the reply must equal the reference after normalisation
(case, punctuation).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vlft.errors import ConfigError, DataError
from vlft.infer._generate import (GenerationSettings, PromptTooLong, check_prompt_length, check_template_flag,
                                  generate_batch, prompt_ids, prompt_inputs)
from vlft.infer.answers import LETTERS, matches_reference, parse_choice
from vlft.infer.eval_file import EvalItem, check_images, read_eval_file


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
