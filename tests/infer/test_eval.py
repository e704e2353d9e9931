"""vlft eval: reading eval files, parsing replies, accuracy against a hand count, batching, the CLI."""
import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vlft.cli import main
from vlft.errors import DataError
from vlft.infer.answers import multiple_choice_prompt, parse_choice, reference_index
from vlft.infer.evaluate import (EvalReport, evaluate_model, format_table, read_eval_file, run_eval, score)
from vlft.infer.loading import load_for_inference

CHOICES = ["noodles", "dumplings", "pizza", "fried rice", "rice"]


@pytest.mark.parametrize("reply, expected", [
    ("B", 1), ("(B)", 1), ("B.", 1), ("B. dumplings", 1), ("dumplings", 1), ("Dumplings.", 1),
    ("b", 1), ("Answer: B", 1), ("The answer is (B).", 1), ("They look like dumplings to me", 1),
    ("A bowl of noodles", 0), ("fried rice", 3), ("rice", 4), ("C. dumplings", 2),
    ("F", None), ("", None), ("no idea", None), ("noodles or dumplings", None),
])
def test_parse_choice(reply, expected):
    assert parse_choice(reply, CHOICES) == expected


@pytest.mark.parametrize("answer, expected", [("B", 1), ("(B)", 1), (1, 1), ("1", 1), ("dumplings", 1), ("e", 4)])
def test_reference_index(answer, expected):
    assert reference_index(answer, CHOICES) == expected


@pytest.mark.parametrize("answer", ["G", 7, "7", "soup", "", None, True])
def test_reference_index_rejects(answer):
    with pytest.raises(ValueError):
        reference_index(answer, CHOICES)


def _image(path, color=(200, 30, 30)):
    Image.new("RGB", (56, 56), color).save(path)
    return path


# (marker in the question, answer, category, scripted reply) -> hand count below
SCRIPT = [
    ("plate one", "B", "steamed", "B"),                  # right
    ("plate two", "A", "steamed", "(B)"),                # wrong
    ("plate three", "C", "steamed", "C. pizza"),         # right
    ("plate four", 1, "fried", "dumplings"),             # right (index answer)
    ("plate five", "D", "fried", "I do not know"),       # wrong, unparseable
    ("plate six", "noodles", "fried", "noodles"),        # right (answer given as text)
]


@pytest.fixture()
def choice_file(tmp_path):
    _image(tmp_path / "dish.png")
    rows = [{"id": f"q{i}", "image": "dish.png", "question": f"Which dish is on {marker}?", "choices": CHOICES[:4],
             "answer": answer, "category": category} for i, (marker, answer, category, _) in enumerate(SCRIPT)]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class ScriptedModel:
    """Stands in for a VLM: replies to each prompt from SCRIPT (found by its marker), like a real generate."""

    device = torch.device("cpu")

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls = []

    def generate(self, input_ids, pixel_values, attention_mask, **kwargs):
        self.calls.append(input_ids.shape)
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            assert mask[-1] == 1  # left padding: every prompt ends at the right edge
            prompt = self.tokenizer.decode(ids[mask.bool()])
            reply = next(r for marker, _, _, r in SCRIPT if marker + "?" in prompt)
            rows.append(self.tokenizer(reply, add_special_tokens=False)["input_ids"] + [kwargs["eos_token_id"][0]])
        longest = max(map(len, rows))
        return torch.tensor([r + [kwargs["pad_token_id"]] * (longest - len(r)) for r in rows])


def test_accuracy_equals_hand_count(tiny_dir, choice_file, tmp_path, monkeypatch):
    _, pipeline = load_for_inference(tiny_dir["internvl_hf"])
    model = ScriptedModel(pipeline.tokenizer)
    monkeypatch.setattr("vlft.infer.loading.load_for_inference", lambda path, template=None: (model, pipeline))
    out = tmp_path / "preds.jsonl"
    lines = []
    reports = run_eval(["scripted"], str(choice_file), out=str(out), batch_size=4, echo=lines.append)

    report = reports[0]
    assert (report.correct, report.total, report.unparseable) == (4, 6, 1)
    assert report.by_category() == {"steamed": (2, 3), "fried": (2, 3)}
    assert [c[0] for c in model.calls] == [4, 2]  # batched
    table = lines[0]
    assert "chance 25.0%" in table and "66.7%" in table and "unparseable" in table
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["correct"] for r in records] == [True, False, True, True, False, True]
    assert [r["parsed"] for r in records] == ["B", "B", "C", "B", None, "A"]
    assert [r["answer"] for r in records] == ["B", "A", "C", "B", "D", "A"]
    assert records[4]["unparseable"] and records[4]["prediction"] == "I do not know"


def test_multiple_choice_rows_get_the_lettered_prompt(choice_file):
    items = read_eval_file(choice_file)
    assert items[0].question == multiple_choice_prompt("Which dish is on plate one?", CHOICES[:4])
    assert items[0].sample.turns[0].text.startswith("<image>\n")
    assert items[0].sample.images[0] == str(choice_file.parent / "dish.png")
    assert [i.answer_index for i in items] == [1, 0, 2, 1, 3, 0]


def test_conversation_rows_and_foodieqa_style_rows(tmp_path):
    _image(tmp_path / "a.png")
    rows = [
        # LLaVA row, reference = last assistant turn, choices as an extra key
        {"id": "c1", "image": "a.png", "choices": ["rice", "soup"], "category": "main",
         "conversations": [{"from": "human", "value": "<image>\nWhich? A. rice B. soup"},
                           {"from": "gpt", "value": "B"}]},
        # open-ended (no choices): exact match after normalisation
        {"id": "c2", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nIs it red?"},
                                                         {"from": "gpt", "value": "Yes"}]},
    ]
    (tmp_path / "conv.json").write_text(json.dumps(rows))
    first, second = read_eval_file(tmp_path / "conv.json")
    assert first.answer_index == 1 and first.category == "main" and first.sample.turns[-1].role == "user"
    assert second.choices == () and second.reference == "Yes"
    assert score(second, "yes.").correct and not score(second, "no").correct
    assert score(first, "B. soup").correct and score(first, "rice").choice == 0

    foodie = [{"question_id": "f1", "question": "Which region?", "choices": ["a", "b", "c", "d"], "answer": "2",
               "image": "a.png"}]
    (tmp_path / "foodie.json").write_text(json.dumps(foodie))
    (item,) = read_eval_file(tmp_path / "foodie.json")
    assert item.answer_index == 2 and item.reference == "C"


def test_rows_without_answers_are_one_clear_error(tiny_dir, tmp_path):
    _image(tmp_path / "a.png")
    rows = [{"id": "x7", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"}]}]
    bad = tmp_path / "no_answers.json"
    bad.write_text(json.dumps(rows))
    result = CliRunner().invoke(main, ["eval", str(tiny_dir["internvl_hf"]), "--data", str(bad)])
    assert result.exit_code != 0
    assert f"{bad}:x7: no reference answer" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    mc = tmp_path / "mc.json"
    mc.write_text(json.dumps([{"image": "a.png", "question": "Which?", "choices": ["a", "b"]}]))
    result = CliRunner().invoke(main, ["eval", str(tiny_dir["internvl_hf"]), "--data", str(mc)])
    assert result.exit_code != 0 and str(mc) in result.stderr and "no reference answer" in result.stderr


def test_missing_image_is_named_before_any_model_loads(tmp_path):
    rows = [{"id": "q1", "image": "gone.png", "question": "Which?", "choices": ["a", "b"], "answer": "A"}]
    (tmp_path / "e.json").write_text(json.dumps(rows))
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "no_model"), "--data", str(tmp_path / "e.json")])
    assert result.exit_code != 0 and str(tmp_path / "gone.png") in result.stderr


def test_batched_generation_equals_one_by_one(tiny_dir, choice_file, tmp_path):
    Image.new("RGB", (140, 56), (20, 20, 200)).save(tmp_path / "wide.png")  # several tiles: other lengths
    rows = [json.loads(line) for line in choice_file.read_text().splitlines()]
    rows[1]["image"] = str(tmp_path / "wide.png")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = read_eval_file(mixed, image_root=choice_file.parent)
    model, pipeline = load_for_inference(tiny_dir["internvl_hf"])
    one = evaluate_model(model, pipeline, items, name="m", batch_size=1, max_new_tokens=6, progress=False)
    many = evaluate_model(model, pipeline, items, name="m", batch_size=4, max_new_tokens=6, progress=False)
    assert [p.reply for p in one.predictions] == [p.reply for p in many.predictions]


def test_two_models_print_a_before_after_table(tiny_dir, choice_file, tmp_path):
    out = tmp_path / "preds.jsonl"
    result = CliRunner().invoke(main, ["eval", str(tiny_dir["internvl_hf"]), str(tiny_dir["internvl_hf_llama"]),
                                       "--data", str(choice_file), "--out", str(out), "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "before" in result.stdout and "after" in result.stdout and "change" in result.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 * len(SCRIPT)
    for model in (tiny_dir["internvl_hf"], tiny_dir["internvl_hf_llama"]):
        mine = [r for r in records if r["model"] == str(model)]
        hand = sum(parse_choice(r["prediction"], CHOICES[:4]) == "ABCD".index(r["answer"]) for r in mine)
        assert sum(r["correct"] for r in mine) == hand
        assert f"{hand / len(mine):.1%}" in result.stdout


def test_eval_file_not_found():
    with pytest.raises(DataError, match="/no/such/file.json: eval file not found"):
        read_eval_file("/no/such/file.json")


def test_one_model_table_has_no_change_column(choice_file):
    items = read_eval_file(choice_file)
    report = EvalReport("work/hf", [score(item, "A") for item in items])
    table = format_table([report], "accuracy")
    assert "change" not in table and "hf" in table and f"{2 / 6:.1%}" in table
