"""LLaVA-NeXT and LLaVA-OneVision through the whole journey: check-data counts the image tokens the official
processor counts, 3 training steps feed image_sizes to the AnyRes packing, merge, and `--to hf --verify`."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from vlft.cli import main
from vlft.tiny.checkpoints import TINY_PINPOINTS, make_tiny_llava_next_hf, make_tiny_llava_onevision_hf

#: family -> (tiny writer, template, the fields the export must keep as the base had them)
FAMILIES = {
    "llava_next": (make_tiny_llava_next_hf, "vicuna_v1",
                   ("vision_feature_select_strategy", "vision_feature_layer", "image_grid_pinpoints")),
    "llava_onevision": (make_tiny_llava_onevision_hf, "qwen2",
                        ("vision_feature_select_strategy", "vision_feature_layer", "image_grid_pinpoints",
                         "vision_aspect_ratio")),
}
#: (width, height) of the training images: wide, tall, large (OneVision shrinks its grid), odd padding.
SIZES = [(100, 60), (60, 100), (200, 210), (97, 33)]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("anyres_bases")
    return {name: writer(root / name) for name, (writer, _, _) in FAMILIES.items()}


def _data(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (width, height) in enumerate(SIZES):
        Image.effect_noise((width, height), 60).convert("RGB").save(root / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "noise"}]})
    (root / "train.json").write_text(json.dumps(rows))
    return root / "train.json"


def _config(tmp_path: Path, base: Path, family: str, **tiling) -> Path:
    sections = {
        "model": {"family": family, "path": str(base), "attn_implementation": "eager",
                  "connector": {"downsample_ratio": 1.0}},
        "data": {"datasets": [{"path": str(_data(tmp_path / "data"))}], "template": FAMILIES[family][1],
                 "max_length": 512, "tiling": {"mode": "anyres", **tiling}},
        "schedule": {"max_steps": 3, "micro_batch_size": 2, "gradient_accumulation": 1, "lr": 1e-3},
        "engine": {"save_steps": 3, "logging_steps": 1},
    }
    config = tmp_path / "run.py"
    config.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    return config


def _official_counts(base: Path) -> list[int]:
    """Image tokens per training image, as the base's own processor (transformers' class) counts them."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    vision = config.vision_config
    pinpoints = config.image_grid_pinpoints
    if config.model_type == "llava_next":
        from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor
        image_processor = LlavaNextImageProcessorPil(image_grid_pinpoints=pinpoints,
                                                     size={"shortest_edge": vision.image_size},
                                                     crop_size={"height": vision.image_size,
                                                                "width": vision.image_size})
        processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                       patch_size=vision.patch_size, num_additional_image_tokens=1,
                                       vision_feature_select_strategy=config.vision_feature_select_strategy)
    else:
        from transformers import LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor
        image_processor = LlavaOnevisionImageProcessorPil(image_grid_pinpoints=pinpoints,
                                                          size={"height": vision.image_size,
                                                                "width": vision.image_size})
        processor = LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                            num_image_tokens=(vision.image_size // vision.patch_size) ** 2,
                                            vision_feature_select_strategy=config.vision_feature_select_strategy,
                                            vision_aspect_ratio=config.vision_aspect_ratio)
    counts = []
    for width, height in SIZES:
        out = processor(images=[Image.new("RGB", (width, height))], text="<image>", return_tensors="pt")
        counts.append(int((out["input_ids"] == config.image_token_index).sum()))
    return counts


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("family", FAMILIES)
def test_check_data_counts_the_official_processors_image_tokens(bases, tmp_path, family):
    from vlft.config import load_config
    from vlft.data.dataset import build_dataset
    from vlft.model.facts import model_facts

    spec = load_config(_config(tmp_path, bases[family], family))
    info, tokenizer = model_facts(spec.model)
    dataset = build_dataset(spec, tokenizer, info, cache=False)
    assert [e.num_image_tokens for e in dataset.encoded] == _official_counts(bases[family])
    item = dataset[2]
    assert item["image_sizes"].tolist() == [[SIZES[2][1], SIZES[2][0]]]


@pytest.mark.parametrize("family", FAMILIES)
def test_pinpoints_other_than_the_models_are_refused_naming_the_key(bases, tmp_path, family):
    config = _config(tmp_path, bases[family], family, grid_pinpoints=[[56, 56], [112, 112]])
    result = CliRunner().invoke(main, ["check-data", str(config)])
    assert result.exit_code == 2, result.output
    assert "data.tiling.grid_pinpoints" in result.output and "image_grid_pinpoints" in result.output


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
    out = tmp_path / "hf"
    result = runner.invoke(main, ["convert", str(work / "checkpoint-3"), str(out), "--to", "hf", "--verify",
                                  "--dtype", "fp32"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "verify (hf)" in result.output and "computation fields as the base had them" in result.output
    written, original = (json.loads((d / "config.json").read_text()) for d in (out, base))
    fields = FAMILIES[family][2]
    assert {f: written[f] for f in fields} == {f: original[f] for f in fields}
    assert written["architectures"] == original["architectures"]
