"""vlft chat: the printed replies are model.generate on the training-format prompt; commands; bad input."""
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vlft.cli import main
from vlft.data.encode import encode_prompt
from vlft.data.record import Sample, Turn
from vlft.infer.loading import load_for_inference

MAX_NEW = 6


@pytest.fixture()
def images(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (56, 56), (220, 40, 30)).save(a)
    Image.new("RGB", (120, 60), (30, 160, 60)).save(b)  # two tiles + thumbnail
    return a, b


def _reply(model, pipeline, turns, images):
    """Greedy reply straight from model.generate, as the streamer prints it (stop token and after cut)."""
    sample = Sample("t", "test", "test", tuple(turns), tuple(str(i) for i in images))
    counts = pipeline.tile_counts(sample)
    ids = encode_prompt(sample.turns, pipeline.tokenizer, pipeline.template, image_tokens=pipeline.image_tokens,
                        tokens_per_image=[c * pipeline.tokens_per_tile for c in counts],
                        system_prompt=pipeline.system_prompt)
    tokenizer = pipeline.tokenizer
    stop = tokenizer.convert_tokens_to_ids(pipeline.template.stop_words[0])
    new = model.generate(torch.tensor([ids]), pipeline.pixels(sample) if images else None,
                         torch.ones(1, len(ids), dtype=torch.long), max_new_tokens=MAX_NEW, do_sample=False,
                         eos_token_id=[stop], pad_token_id=tokenizer.pad_token_id)[0].tolist()
    new = new[:new.index(stop)] if stop in new else new
    return tokenizer.decode(new, skip_special_tokens=True)


def test_interactive_turns_image_switch_and_reset(tiny_dir, images):
    a, b = images
    model_dir = tiny_dir["internvl_hf"]
    stdin = f"What is this?\n/image {b}\nAnd this one?\n/reset\nhello\n/quit\nnever asked\n"
    result = CliRunner().invoke(main, ["chat", str(model_dir), "--image", str(a), "--max-new-tokens", str(MAX_NEW)],
                                input=stdin)
    assert result.exit_code == 0, result.output

    model, pipeline = load_for_inference(model_dir)
    turn1 = [Turn("user", "<image>\nWhat is this?")]
    r1 = _reply(model, pipeline, turn1, [a])
    turn2 = turn1 + [Turn("assistant", r1.strip()), Turn("user", "<image>\nAnd this one?")]
    r2 = _reply(model, pipeline, turn2, [a, b])
    r3 = _reply(model, pipeline, [Turn("user", "hello")], [])  # after /reset: no history, no image
    assert result.stdout == f"{r1}\n{r2}\n{r3}\n"
    assert f"image: {b}" in result.stderr and "conversation cleared" in result.stderr


def test_one_shot_prompt(tiny_dir, images):
    a, _ = images
    model_dir = tiny_dir["internvl_hf_llama"]
    result = CliRunner().invoke(main, ["chat", str(model_dir), "--image", str(a), "--prompt", "Which dish?",
                                       "--max-new-tokens", str(MAX_NEW)])
    assert result.exit_code == 0, result.output
    model, pipeline = load_for_inference(model_dir)
    assert pipeline.template.name == "internlm2-chat"  # the default for InternVL on a llama-style LLM
    assert result.stdout == _reply(model, pipeline, [Turn("user", "<image>\nWhich dish?")], [a]) + "\n"


def test_bad_image_command_keeps_the_chat_going(tiny_dir, tmp_path):
    result = CliRunner().invoke(main, ["chat", str(tiny_dir["internvl_hf"]), "--max-new-tokens", "2"],
                                input=f"/image {tmp_path / 'missing.png'}\n/bogus\nsee <image> here\nhi\n")
    assert result.exit_code == 0
    assert f"image not found: {tmp_path / 'missing.png'}" in result.stderr and "unknown command /bogus" in result.stderr
    assert "1 <image> placeholder but 0 images" in result.stderr  # said, and the chat goes on
    assert len(result.stdout.splitlines()) >= 1


def test_image_that_does_not_open(tiny_dir, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a picture")
    result = CliRunner().invoke(main, ["chat", str(tiny_dir["internvl_hf"]), "--image", str(bad), "--prompt", "hi"])
    assert result.exit_code != 0
    assert result.stderr.startswith("error: ") and str(bad) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("contents", ["empty", "text_only"])
def test_directory_that_is_not_a_model(tmp_path, contents):
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    if contents == "text_only":
        (folder / "notes.txt").write_text("hello")
    result = CliRunner().invoke(main, ["chat", str(folder), "--prompt", "hi"])
    assert result.exit_code != 0
    assert str(folder) in result.stderr and "not a model directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_llm_only_directory_is_refused(tiny_dir):
    result = CliRunner().invoke(main, ["chat", str(tiny_dir["internvl_llm"]), "--prompt", "hi"])
    assert result.exit_code != 0 and str(tiny_dir["internvl_llm"]) in result.stderr
    assert "not a whole vision-language model" in result.stderr


def test_internvl_chat_directory_uses_its_config(tiny_dir):
    model, pipeline = load_for_inference(tiny_dir["internvl_chat_internlm2"])
    assert pipeline.template.name == "internlm2-chat"
    assert pipeline.tiling.mode == "dynamic" and pipeline.tiling.use_thumbnail


def test_template_read_from_the_tokenizers_chat_template(tiny_dir, tmp_path):
    import shutil

    from vlft.data.templates import get_template
    from vlft.model.layouts import Layout
    from vlft.model.load import load_tokenizer
    from vlft.infer.loading import data_settings

    model_dir = tmp_path / "hf"
    shutil.copytree(tiny_dir["internvl_hf"], model_dir)
    tokenizer = load_tokenizer(model_dir)
    assert data_settings(model_dir, Layout.HF_INTERNVL, tokenizer).template == "internvl2_5"  # no template: default

    from dataclasses import replace

    tokenizer.chat_template = get_template("internlm2-chat").jinja
    assert data_settings(model_dir, Layout.HF_INTERNVL, tokenizer).template == "internlm2-chat"
    tokenizer.chat_template = replace(get_template("chatml"), default_system='A "food" bot.').jinja
    settings = data_settings(model_dir, Layout.HF_INTERNVL, tokenizer)
    # chatml and internvl2_5 differ only in their default system prompt, so either renders this template
    assert settings.template in ("chatml", "internvl2_5") and settings.system_prompt == 'A "food" bot.'
    assert data_settings(model_dir, Layout.HF_INTERNVL, tokenizer, template="vicuna_v1").template == "vicuna_v1"

    result = CliRunner().invoke(main, ["chat", str(model_dir), "--template", "no-such", "--prompt", "hi"])
    assert result.exit_code != 0 and "--template" in result.stderr  # checked before the model loads
    assert "unknown chat template 'no-such'" in result.stderr


def test_llava_directory_one_shot(tiny_dir, images):
    a, _ = images
    model_dir = tiny_dir["llava_hf"]
    result = CliRunner().invoke(main, ["chat", str(model_dir), "--image", str(a), "--prompt", "What is it?",
                                       "--max-new-tokens", str(MAX_NEW)])
    assert result.exit_code == 0, result.output
    model, pipeline = load_for_inference(model_dir)
    assert (pipeline.template.name, pipeline.tiling.mode) == ("vicuna_v1", "pad_square")
    assert result.stdout == _reply(model, pipeline, [Turn("user", "<image>\nWhat is it?")], [a]) + "\n"
