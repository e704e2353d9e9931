"""chat/eval: flags checked before any model loads, prompts that do not fit the context, --out never over an input."""
import json

import pytest
from click.testing import CliRunner
from PIL import Image

import vlft.infer.loading
from vlft.cli import main
from vlft.errors import ConfigError
from vlft.infer.evaluate import run_eval


@pytest.fixture()
def no_model_load(monkeypatch):
    """Any model load fails the test: the checks under test must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(vlft.infer.loading, "load_for_inference", refuse)


@pytest.fixture()
def eval_file(tmp_path):
    Image.new("RGB", (56, 56), (200, 30, 30)).save(tmp_path / "dish.png")
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"id": "q0", "image": "dish.png", "question": "Which dish?",
                                "choices": ["rice", "dumplings"], "answer": "B"}) + "\n")
    return path


def _one_error_line(result, *needles):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.battery("chat-eval", was="traceback")
@pytest.mark.parametrize("flags, named", [
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--max-new-tokens", "-1"], "--max-new-tokens"),
    (["--temperature", "-1"], "--temperature"),
    (["--top-p", "5"], "--top-p"),
    (["--top-p", "0"], "--top-p"),
])
def test_a_bad_chat_number_is_one_line_naming_the_flag_before_any_model_loads(flags, named, tmp_path, no_model_load):
    result = CliRunner().invoke(main, ["chat", str(tmp_path / "no-such-model"), "--prompt", "hi", *flags])
    _one_error_line(result, named)


@pytest.mark.battery("chat-eval", was="traceback")
@pytest.mark.parametrize("flags, named", [
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_a_bad_eval_number_is_one_line_naming_the_flag_before_any_model_loads(flags, named, eval_file, tmp_path,
                                                                              no_model_load):
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "no-such-model"), "--data", str(eval_file), *flags])
    _one_error_line(result, named)


@pytest.mark.battery("chat-eval", was="silent")
@pytest.mark.parametrize("command", ["chat", "eval"])
def test_an_unknown_template_names_the_flag_and_the_known_templates(command, eval_file, tmp_path, no_model_load):
    args = ["--prompt", "hi"] if command == "chat" else ["--data", str(eval_file)]
    result = CliRunner().invoke(main, [command, str(tmp_path / "model"), *args, "--template", "internvl25"])
    line = _one_error_line(result, "--template", "'internvl25'", "internvl2_5", "vicuna_v1")
    assert "data.template" not in line


@pytest.mark.battery("chat-eval", was="lost")
def test_eval_out_that_is_the_eval_file_is_refused_and_the_file_is_untouched(eval_file, tmp_path, no_model_load):
    before = eval_file.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(eval_file)
    for out in (eval_file, link, tmp_path / "." / "eval.jsonl"):
        result = CliRunner().invoke(main, ["eval", str(tmp_path / "model"), "--data", str(eval_file),
                                           "--out", str(out)])
        _one_error_line(result, "--out", "eval file")
    with pytest.raises(ConfigError, match="eval file"):  # even when overwriting is allowed
        run_eval([str(tmp_path / "model")], str(eval_file), out=str(eval_file), overwrite=True)
    assert eval_file.read_bytes() == before


@pytest.mark.battery("chat-eval", was="lost")
def test_eval_out_that_exists_is_refused_without_overwrite(eval_file, tmp_path, no_model_load):
    out = tmp_path / "preds.jsonl"
    out.write_text("earlier predictions\n")
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "model"), "--data", str(eval_file), "--out", str(out)])
    _one_error_line(result, str(out), "--overwrite")
    assert out.read_text() == "earlier predictions\n"


def test_eval_out_with_overwrite_replaces_the_file_whole(tiny_dir, eval_file, tmp_path):
    out = tmp_path / "preds.jsonl"
    out.write_text("earlier predictions\n")
    run_eval([str(tiny_dir["internvl_hf"])], str(eval_file), out=str(out), overwrite=True, max_new_tokens=2,
             echo=lambda _: None)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == ["q0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dish.png", "eval.jsonl", "preds.jsonl"]  # no temp left


@pytest.mark.battery("chat-eval", was="silent")
def test_a_chat_prompt_longer_than_the_context_is_one_line_with_the_counts(tiny_dir):
    prompt = "dumplings " * 5000  # the tiny LLM's max_position_embeddings is 4096
    result = CliRunner().invoke(main, ["chat", str(tiny_dir["internvl_hf"]), "--prompt", prompt,
                                       "--max-new-tokens", "8"])
    line = _one_error_line(result, "max_position_embeddings 4,096", "--max-new-tokens 8")
    assert "tokens" in line


@pytest.mark.battery("chat-eval", was="silent")
def test_an_interactive_chat_says_a_too_long_turn_and_goes_on(tiny_dir):
    stdin = "dumplings " * 5000 + "\nhi\n"
    result = CliRunner().invoke(main, ["chat", str(tiny_dir["internvl_hf"]), "--max-new-tokens", "2"], input=stdin)
    assert result.exit_code == 0, result.output
    assert "max_position_embeddings 4,096" in result.stderr
    assert len(result.stdout.splitlines()) == 1  # the reply to "hi"


@pytest.mark.battery("chat-eval", was="silent")
def test_eval_refuses_a_file_with_a_question_longer_than_the_context_naming_it(tiny_dir, tmp_path):
    rows = [{"id": "short", "question": "Which?", "choices": ["a", "b"], "answer": "A"},
            {"id": "long", "question": "dumplings " * 5000, "choices": ["a", "b"], "answer": "A"}]
    data = tmp_path / "eval.json"
    data.write_text(json.dumps(rows))
    result = CliRunner().invoke(main, ["eval", str(tiny_dir["internvl_hf"]), "--data", str(data)])
    _one_error_line(result, f"{data}:long", "max_position_embeddings 4,096")
