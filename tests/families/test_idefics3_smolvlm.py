"""Idefics3 and SmolVLM, a family that came in through the seam: the tiny checkpoints compute as transformers'
classes, the "split" tiling gives the official image processors' pixels and the official processors' prompt ids
(odd sizes, several grids, the single-tile case), and the whole journey runs: check-data, train (LoRA on the LLM,
connector trained), merge, `--to hf --verify`, `--to lora --verify`."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vlft.cli import main
from vlft.tiny.checkpoints import make_tiny_idefics3_hf, make_tiny_smolvlm_hf

#: family -> (tiny writer, transformers' PIL image processor, its processor class)
FAMILIES = {
    "idefics3": (make_tiny_idefics3_hf, "Idefics3ImageProcessorPil", "Idefics3Processor"),
    "smolvlm": (make_tiny_smolvlm_hf, "SmolVLMImageProcessorPil", "SmolVLMProcessor"),
}
#: (width, height): odd, wide, tall, tiny, larger than the longest edge, exactly one tile.
SIZES = [(97, 33), (33, 97), (5, 3), (300, 170), (57, 300), (56, 56)]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("split_bases")
    return {name: writer(root / name) for name, (writer, _, _) in FAMILIES.items()}


def _image(width: int, height: int) -> Image.Image:
    return Image.effect_noise((width, height), 60).convert("RGB")


def _data(root: Path, sizes=SIZES[:4]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (width, height) in enumerate(sizes):
        _image(width, height).save(root / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "noise"}]})
    (root / "train.json").write_text(json.dumps(rows))
    return root / "train.json"


def _config(tmp_path: Path, base: Path, family: str, *, train_connector: bool = True, template: str = "smolvlm",
            **tiling) -> Path:
    sections = {
        "model": {"family": family, "path": str(base), "attn_implementation": "eager",
                  "connector": {"train": train_connector},
                  "llm": {"train": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}},
        "data": {"datasets": [{"path": str(_data(tmp_path / "data"))}], "template": template,
                 "max_length": 1024, "tiling": {"mode": "split", **tiling}},
        "schedule": {"max_steps": 2, "micro_batch_size": 2, "gradient_accumulation": 1, "lr": 1e-3},
        "engine": {"save_steps": 2, "logging_steps": 1, "sample_every": 2, "sample_max_new_tokens": 2,
                   "sample_prompts": [{"image": str(tmp_path / "data" / "0.png"), "prompt": "What is it?"}]},
    }
    config = tmp_path / "run.py"
    config.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    return config


def _official_image_processor(family: str, **kwargs):
    import transformers

    return getattr(transformers, FAMILIES[family][1])(size={"longest_edge": 224},
                                                      max_image_size={"longest_edge": 56}, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_tiny_checkpoint_computes_as_transformers_class(bases, family):
    from vlft.families import family_named
    from vlft.model.load import build_vlm
    from vlft.specs import ModelSpec

    ours, tokenizer = build_vlm(ModelSpec(family=family, path=str(bases[family]), dtype="float32",
                                          attn_implementation="eager"))
    theirs = family_named(family).official_class().from_pretrained(str(bases[family]), dtype=torch.float32,
                                                                   attn_implementation="eager")
    torch.manual_seed(0)
    tiles = torch.randn(5, 3, 56, 56)
    image = tokenizer.convert_tokens_to_ids("<image>")
    ids = torch.tensor([[3, 4] + [image] * (ours.info.tokens_per_tile * 5) + [5, 6, 7]])
    with torch.no_grad():
        our_logits = ours.eval()(input_ids=ids, pixel_values=tiles).logits
        their_logits = theirs.eval()(input_ids=ids, pixel_values=tiles[None]).logits
    assert ours.info.tokens_per_tile == 4 and ours.info.select_strategy == "full"
    assert float((our_logits - their_logits).abs().max()) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("longest_edge", [224, 56])
def test_split_tiling_gives_the_official_image_processors_pixels(family, longest_edge):
    from vlft.data.tiling import TilingSpec, num_tiles, tiles_for_image

    processor = _official_image_processor(family)
    processor.size = {"longest_edge": longest_edge}
    spec = TilingSpec(mode="split", tile_size=56, longest_edge=longest_edge, mean=(0.5,) * 3, std=(0.5,) * 3)
    for width, height in SIZES:
        image = _image(width, height)
        theirs = processor(images=[image], return_tensors="pt")["pixel_values"][0]
        ours = tiles_for_image(image, spec)
        assert ours.shape == theirs.shape, (width, height)
        assert num_tiles(width, height, spec) == ours.shape[0]
        assert float((ours - theirs).abs().max()) == 0.0, (width, height)


def _official_prompt_ids(family: str, tokenizer, image_processor, text: str, image) -> list[int]:
    """The ids transformers' processor gives: its own replace_image_token (a whole SmolVLMProcessor needs a video
    processor and num2words), then the tokenizer, as the processor's __call__ does."""
    import transformers

    processor_class = getattr(transformers, FAMILIES[family][2])
    if family == "idefics3":
        processor = processor_class(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4)
        return processor(images=[image], text=text)["input_ids"][0]
    expander = object.__new__(processor_class)
    expander.fake_image_token, expander.image_token, expander.global_image_token = (
        "<fake_token_around_image>", "<image>", "<global-img>")
    expander.image_seq_len = 4
    features = image_processor(images=[image], return_row_col_info=True)
    return tokenizer(text.replace("<image>", expander.replace_image_token(features, 0)),
                     add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("longest_edge", [224, 56])
def test_prompt_ids_are_the_official_processors(bases, tmp_path, family, longest_edge):
    from transformers import AutoTokenizer

    from vlft.config import load_config
    from vlft.data.dataset import pipeline_from_spec
    from vlft.data.prompt import generation_prompt
    from vlft.data.record import Turn
    from vlft.model.facts import model_facts

    spec = load_config(_config(tmp_path, bases[family], family, template="chatml", longest_edge=longest_edge))
    info, tokenizer = model_facts(spec.model)
    pipeline = pipeline_from_spec(spec, tokenizer, info)
    image_processor = _official_image_processor(family)
    image_processor.size = {"longest_edge": longest_edge}
    official_tokenizer = AutoTokenizer.from_pretrained(str(bases[family]))
    for width, height in SIZES:
        image = _image(width, height)
        turns = [Turn("user", "<image>\nWhat is it?")]
        ours = generation_prompt(pipeline, turns, [1], image_sizes=[(width, height)])
        text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"  # chatml, as trained
                "<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n")
        theirs = _official_prompt_ids(family, official_tokenizer, image_processor, text, image)
        assert ours == list(theirs), (width, height)


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("family", FAMILIES)
def test_check_data_train_merge_and_convert_to_hf_verify(bases, tmp_path, family):
    base = bases[family]
    config = _config(tmp_path, base, family)
    runner = CliRunner()
    result = runner.invoke(main, ["check-data", str(config)])
    assert result.exit_code == 0, result.output
    work = tmp_path / "work"
    result = runner.invoke(main, ["train", str(config), "--work-dir", str(work), "--deepspeed", "none"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "[sample @ step 2] 'What is it?'" in result.output
    merged = tmp_path / "merged"
    result = runner.invoke(main, ["merge", str(work / "checkpoint-2"), str(merged), "--dtype", "fp32"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = tmp_path / "hf"
    result = runner.invoke(main, ["convert", str(merged), str(out), "--to", "hf", "--verify", "--dtype", "fp32"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "verify (hf)" in result.output and "computation fields as the base had them" in result.output
    written, original = (json.loads((d / "config.json").read_text()) for d in (out, base))
    assert written["architectures"] == original["architectures"]
    assert {f: written[f] for f in ("scale_factor", "image_token_id")} == \
        {f: original[f] for f in ("scale_factor", "image_token_id")}


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("family", FAMILIES)
def test_an_llm_lora_run_exports_to_lora_and_verifies_on_the_official_class(bases, tmp_path, family):
    config = _config(tmp_path, bases[family], family, train_connector=False)
    runner = CliRunner()
    work = tmp_path / "work"
    result = runner.invoke(main, ["train", str(config), "--work-dir", str(work), "--deepspeed", "none"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = tmp_path / "lora"
    result = runner.invoke(main, ["convert", str(work / "checkpoint-2"), str(out), "--to", "lora", "--verify"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert json.loads((out / "vlft_lora.json").read_text())["layout"] == "hf"
    assert (out / "adapter_model.safetensors").is_file()



@pytest.mark.parametrize("family", FAMILIES)
def test_chat_replies_as_model_generate_on_the_training_prompt(bases, tmp_path, family):
    from vlft.data.prompt import generation_prompt, stop_kwargs
    from vlft.data.record import Sample, Turn
    from vlft.infer.loading import load_for_inference

    image = tmp_path / "wide.png"
    _image(97, 33).save(image)
    result = CliRunner().invoke(main, ["chat", str(bases[family]), "--image", str(image), "--prompt", "What is it?",
                                       "--max-new-tokens", "5"])
    assert result.exit_code == 0, result.output
    model, pipeline = load_for_inference(bases[family])
    assert pipeline.tiling.mode == "split" and pipeline.tiling.longest_edge == 224  # the base's preprocessor
    assert pipeline.template.name == "smolvlm"  # the family's default on a tokenizer without a chat template
    sample = Sample("t", "test", "test", (Turn("user", "<image>\nWhat is it?"),), (str(image),))
    ids = generation_prompt(pipeline, sample.turns, pipeline.tile_counts(sample), image_sizes=[(97, 33)])
    kwargs = stop_kwargs(pipeline.tokenizer, pipeline.template)
    new = model.generate(torch.tensor([ids]), pipeline.pixels(sample), torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=5, do_sample=False, pad_token_id=pipeline.tokenizer.pad_token_id,
                         **kwargs)[0].tolist()
    stops = [i for i, token in enumerate(new) if token in kwargs["eos_token_id"]]
    reply = pipeline.tokenizer.decode(new[:stops[0]] if stops else new, skip_special_tokens=True)
    assert result.stdout == reply + "\n"


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_batched_equals_one_by_one_and_the_web_view_shows_the_split(bases, tmp_path, family):
    from vlft.data.record import Sample, Turn
    from vlft.infer.evaluate import evaluate_model, read_eval_file
    from vlft.infer.image_view import describe, image_views
    from vlft.infer.loading import load_for_inference

    rows = []
    for i, (width, height) in enumerate(SIZES[:3]):
        _image(width, height).save(tmp_path / f"{i}.png")
        rows.append({"id": f"q{i}", "image": f"{i}.png", "question": "Which?", "choices": ["a", "b"], "answer": "A"})
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = read_eval_file(tmp_path / "eval.jsonl", image_root=tmp_path)
    model, pipeline = load_for_inference(bases[family])
    one = evaluate_model(model, pipeline, items, name="m", batch_size=1, max_new_tokens=4, progress=False)
    many = evaluate_model(model, pipeline, items, name="m", batch_size=3, max_new_tokens=4, progress=False)
    assert [p.reply for p in one.predictions] == [p.reply for p in many.predictions]
    sample = Sample("t", "test", "test", (Turn("user", "<image>\nWhich?"),), (str(tmp_path / "0.png"),))
    view, = image_views(pipeline, sample)
    assert (view.grid, len(view.tiles), view.image_tokens) == ((4, 2), 9, 36)  # 97 x 33: 2 rows of 4 + global
    assert "grid 4×2 + global image" in describe(view, 1, pipeline)


@pytest.mark.parametrize("family", FAMILIES)
def test_qlora_quantizes_the_llm_only_by_the_official_module_names(bases, family):
    import re

    from torch import nn

    from vlft.families import family_named
    from vlft.model.load import quantization_config
    from vlft.specs import QuantSpec

    skip = quantization_config(QuantSpec(bits=4), family_named(family)).llm_int8_skip_modules
    official = family_named(family).official_class().from_pretrained(str(bases[family]))
    kept = {name for name, module in official.named_modules() if isinstance(module, nn.Linear)
            and any(re.match(pattern, name) for pattern in skip)}
    linears = {name for name, module in official.named_modules() if isinstance(module, nn.Linear)}
    assert kept == {name for name in linears if not name.startswith("model.text_model.")}


def test_a_tile_marker_written_in_the_text_drops_the_sample_in_one_line(bases, tmp_path):
    from vlft.config import load_config
    from vlft.data.dataset import build_dataset
    from vlft.model.facts import model_facts

    config = _config(tmp_path, bases["smolvlm"], "smolvlm")
    rows = json.loads((tmp_path / "data" / "train.json").read_text())
    rows[0]["conversations"][0]["value"] = "<image>\nWhat is <row_1_col_2>?"
    (tmp_path / "data" / "train.json").write_text(json.dumps(rows))
    spec = load_config(config)
    info, tokenizer = model_facts(spec.model)
    dataset = build_dataset(spec, tokenizer, info, cache=False)
    assert len(dataset) == 3
    assert any(":0:" in p and "<row_1_col_2> literally" in p for p in dataset.stats.problems), dataset.stats.problems
