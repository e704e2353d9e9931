"""FoodieQA (lyan62/FoodieQA) single-image multiple-choice questions -> vlft eval (and train) files.

FoodieQA's release folder holds ``images/`` and ``sivqa_tidy.json``: a list of questions, each

    {"question_id", "question", "choices": [4 options], "answer": "2" (0-based index, as a string),
     "question_type", "food_name", "question_en", "choices_en",
     "food_meta": {"food_name", "food_file": "images/....jpg", "food_location", "food_type", ...}}

Each becomes one row that `vlft eval` scores and `vlft train` / `vlft check-data` read (LLaVA layout):

    {"id", "image": ABSOLUTE path, "conversations": [
        {"from": "human", "value": "<image>\\n{question}\\nA. ...\\nB. ...\\nC. ...\\nD. ...\\nAnswer with the
                                   option's letter from the given choices directly."},
        {"from": "gpt", "value": "C"}],
     "choices": [...], "answer": "C", "category": question_type, "food_name", "food_type", "region"}

FoodieQA's terms allow evaluation only, not training: by default every question goes to the eval file.
``--train-fraction`` splits by image (no image in both files) for data of your own in this layout.

Usage:
    python recipes/food/convert_foodieqa.py --foodieqa data/FoodieQA --out data/food [--lang en|zh]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

LETTERS = "ABCDEFGH"
INSTRUCTION = "Answer with the option's letter from the given choices directly."
QUESTION_FILE = "sivqa_tidy.json"


class ConvertError(ValueError):
    """One line naming the file and question that cannot be converted."""


def mc_prompt(question: str, choices: list[str]) -> str:
    """The same prompt `vlft eval` builds for a multiple-choice row (vlft.infer.answers.multiple_choice_prompt)."""
    options = "\n".join(f"{LETTERS[i]}. {c.strip()}" for i, c in enumerate(choices))
    return f"{question.strip()}\n{options}\n{INSTRUCTION}"


def convert_item(item: dict, *, root: Path, lang: str, where: str) -> dict:
    """One FoodieQA question -> one vlft row (see the module docstring)."""
    suffix = "_en" if lang == "en" else ""
    qid = item.get("question_id", "?")
    where = f"{where}:{qid}"

    def need(key, container=item, kind=str):
        value = container.get(key)
        if not isinstance(value, kind) or (kind is str and not value.strip()):
            raise ConvertError(f"{where}: missing or empty {key!r}")
        return value

    question = need("question" + suffix)
    choices = need("choices" + suffix, kind=list)
    if not 2 <= len(choices) <= len(LETTERS) or not all(isinstance(c, str) for c in choices):
        raise ConvertError(f"{where}: 'choices{suffix}' must be 2-{len(LETTERS)} option texts, got {choices!r}")
    answer = item.get("answer")
    try:
        index = int(answer)
    except (TypeError, ValueError):
        raise ConvertError(f"{where}: 'answer' must be a 0-based option index, got {answer!r}") from None
    if not 0 <= index < len(choices):
        raise ConvertError(f"{where}: 'answer' {index} is out of range for {len(choices)} choices")
    meta = need("food_meta", kind=dict)
    image = root / need("food_file", meta)
    if not image.is_file():
        raise ConvertError(f"{where}: image not found: {image}")
    return {
        "id": str(qid),
        "image": str(image.resolve()),
        "conversations": [
            {"from": "human", "value": "<image>\n" + mc_prompt(question, choices)},
            {"from": "gpt", "value": LETTERS[index]},
        ],
        "choices": [c.strip() for c in choices],
        "answer": LETTERS[index],
        "category": str(item.get("question_type") or "all"),
        "food_name": meta.get("food_name") or item.get("food_name"),
        "food_type": meta.get("food_type"),
        "region": meta.get("food_location"),
    }


def convert(foodieqa: str | Path, out: str | Path, *, lang: str = "en", train_fraction: float = 0.0,
            seed: int = 0) -> dict[str, Path]:
    """Write ``foodieqa_eval.json`` (and ``foodieqa_train.json`` when train_fraction > 0) under `out`."""
    root = Path(foodieqa)
    source = root / QUESTION_FILE if root.is_dir() else root
    root = source.parent
    if lang not in ("en", "zh"):
        raise ConvertError(f"--lang must be 'en' or 'zh', got {lang!r}")
    if not 0 <= train_fraction < 1:
        raise ConvertError(f"--train-fraction must be in [0, 1), got {train_fraction}")
    if not source.is_file():
        raise ConvertError(f"{source}: not found; give the FoodieQA folder (with {QUESTION_FILE} and images/)")
    try:
        items = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConvertError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(items, list) or not items:
        raise ConvertError(f"{source}: expected a non-empty list of questions")
    rows = [convert_item(item, root=root, lang=lang, where=str(source)) for item in items]

    images = sorted({row["image"] for row in rows})
    random.Random(seed).shuffle(images)
    train_images = set(images[:round(train_fraction * len(images))])
    splits = {"eval": [r for r in rows if r["image"] not in train_images],
              "train": [r for r in rows if r["image"] in train_images]}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, split_rows in splits.items():
        if split_rows:
            written[split] = out / f"foodieqa_{split}.json"
            written[split].write_text(json.dumps(split_rows, ensure_ascii=False, indent=1), encoding="utf-8")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="FoodieQA's terms: evaluation only; train on data of your own.")
    parser.add_argument("--foodieqa", required=True, help=f"FoodieQA folder (holding {QUESTION_FILE} and images/)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--lang", default="en", choices=["en", "zh"], help="question language (default en)")
    parser.add_argument("--train-fraction", type=float, default=0.0,
                        help="share of images whose questions go to foodieqa_train.json (default 0)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        written = convert(args.foodieqa, args.out, lang=args.lang, train_fraction=args.train_fraction,
                          seed=args.seed)
    except ConvertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, path in written.items():
        count = len(json.loads(path.read_text(encoding="utf-8")))
        print(f"{split}: {count} questions -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
