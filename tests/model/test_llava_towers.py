"""LLaVA with a CLIP or a SigLIP tower and every select strategy / feature layer: vlft's model equals
transformers' LlavaForConditionalGeneration before any training, and the journey keeps the config's fields."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vlft.cli import main
from vlft.config import spec_from_dict
from vlft.model.facts import model_facts
from vlft.model.load import build_vlm
from vlft.tiny.checkpoints import make_tiny_llava_hf

CASES = [("clip", "default", -2), ("clip", "full", -2), ("clip", "full", -1),
         ("siglip", "full", -1), ("siglip", "full", -2), ("siglip", "default", -2)]
#: What the export must write back as the base had it.
FIELDS = ("vision_feature_select_strategy", "vision_feature_layer", "image_seq_length")


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root, made = tmp_path_factory.mktemp("llava_towers"), {}

    def get(vision, strategy, layer):
        key = (vision, strategy, layer)
        if key not in made:
            made[key] = make_tiny_llava_hf(root / "-".join(map(str, key)), vision=vision, select_strategy=strategy,
                                           feature_layer=layer)
        return made[key]

    return get


def _model_spec(base):
    return spec_from_dict({"model": {"family": "llava", "path": str(base), "attn_implementation": "eager",
                                     "connector": {"downsample_ratio": 1.0}},
                           "data": {"tiling": {"mode": "pad_square"}, "template": "vicuna_v1"}}).model


@pytest.mark.battery("model-dirs", was="silent")
@pytest.mark.parametrize("vision, strategy, layer", CASES)
def test_llava_gives_the_official_logits_for_each_tower_strategy_and_layer(bases, vision, strategy, layer):
    from transformers import AutoModelForImageTextToText

    base = bases(vision, strategy, layer)
    model, _ = build_vlm(_model_spec(base))
    config = json.loads((base / "config.json").read_text())
    assert model.info.tokens_per_tile == config["image_seq_length"]
    official = AutoModelForImageTextToText.from_pretrained(base, attn_implementation="eager").eval()
    torch.manual_seed(0)
    ids = torch.tensor([[3, 7, *[model.info.image_token_id] * model.info.tokens_per_tile, 40, 50, 60]])
    pixels = torch.randn(1, 3, model.info.tile_size, model.info.tile_size)
    with torch.no_grad():
        ours = model.eval()(input_ids=ids, pixel_values=pixels).logits
        theirs = official(input_ids=ids, pixel_values=pixels).logits
    assert float((ours - theirs).abs().max()) <= 1e-5


@pytest.mark.parametrize("vision, strategy, layer", [("siglip", "full", -1), ("clip", "full", -2)])
def test_check_data_counts_the_image_tokens_the_checkpoint_says(bases, vision, strategy, layer):
    base = bases(vision, strategy, layer)
    info, _ = model_facts(_model_spec(base))
    assert info.tokens_per_tile == json.loads((base / "config.json").read_text())["image_seq_length"]


def _data(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, rgb) in enumerate([("red", (220, 30, 30)), ("blue", (30, 40, 220))] * 2):
        Image.new("RGB", (60 + 4 * i, 56), rgb).save(root / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": name}]})
    (root / "train.json").write_text(json.dumps(rows))
    return root / "train.json"


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("vision, strategy, layer", [("siglip", "full", -1), ("clip", "full", -2)])
def test_check_data_train_and_convert_keep_the_towers_fields(bases, tmp_path, vision, strategy, layer):
    base = bases(vision, strategy, layer)
    sections = {
        "model": {"family": "llava", "path": str(base), "attn_implementation": "eager",
                  "connector": {"downsample_ratio": 1.0}},
        "data": {"datasets": [{"path": str(_data(tmp_path / "data"))}], "template": "vicuna_v1", "max_length": 256,
                 "tiling": {"mode": "pad_square"}},
        "schedule": {"max_steps": 3, "micro_batch_size": 1, "gradient_accumulation": 1, "lr": 1e-3},
        "engine": {"save_steps": 3, "logging_steps": 1},
    }
    config = tmp_path / "run.py"
    config.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
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
    assert {f: written[f] for f in FIELDS} == {f: original[f] for f in FIELDS}
    processor = json.loads((out / "processor_config.json").read_text())
    assert processor["vision_feature_select_strategy"] == strategy
    assert processor["num_additional_image_tokens"] == (0 if vision == "siglip" else 1)
