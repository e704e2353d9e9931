"""Pixel mean/std come from the base (its preprocessor_config.json, else its tower's usual values), not from the
family alone: a LLaVA base with a SigLIP tower is normalised with 0.5/0.5 in training and in the export."""
import json

import pytest
from click.testing import CliRunner
from PIL import Image

from vlft.cli import main
from vlft.config import load_config
from vlft.data.dataset import pipeline_from_spec
from vlft.data.record import Sample, Turn
from vlft.families import LLAVA, normalisation_of
from vlft.model.facts import model_facts
from vlft.model.load import build_vlm
from vlft.tiny.checkpoints import make_tiny_llava_hf

SIGLIP = [0.5, 0.5, 0.5]


@pytest.fixture(scope="module")
def siglip_base(tmp_path_factory):
    """A LLaVA + SigLIP base with SigLIP's own image processor beside it (as llava-interleave ships)."""
    from transformers import SiglipImageProcessorPil

    base = make_tiny_llava_hf(tmp_path_factory.mktemp("siglip") / "base", vision="siglip", select_strategy="full",
                              feature_layer=-1)
    SiglipImageProcessorPil(size={"height": 56, "width": 56}).save_pretrained(str(base))
    return base


def _config(tmp_path, base):
    image = tmp_path / "cat.png"
    Image.effect_noise((90, 70), 50).convert("RGB").save(image)
    rows = [{"id": str(i), "image": "cat.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "noise"}]} for i in range(2)]
    (tmp_path / "train.json").write_text(json.dumps(rows))
    sections = {
        "model": {"family": "llava", "path": str(base), "attn_implementation": "eager",
                  "connector": {"downsample_ratio": 1.0}},
        "data": {"datasets": [{"path": str(tmp_path / "train.json")}], "template": "vicuna_v1", "max_length": 256,
                 "tiling": {"mode": "resize"}},
        "schedule": {"max_steps": 3, "micro_batch_size": 1, "gradient_accumulation": 1, "lr": 1e-3},
        "engine": {"save_steps": 3, "logging_steps": 1},
    }
    config = tmp_path / "run.py"
    config.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    return config, image


@pytest.mark.battery("images", was="silent")
def test_a_siglip_llava_base_trains_on_the_pixels_its_own_image_processor_gives(siglip_base, tmp_path):
    from transformers import AutoImageProcessor

    config, image = _config(tmp_path, siglip_base)
    spec = load_config(config)
    info, tokenizer = model_facts(spec.model)
    assert normalisation_of(info) == ((0.5,) * 3, (0.5,) * 3) != (LLAVA.mean, LLAVA.std)
    model, _ = build_vlm(spec.model)
    assert (model.info.image_mean, model.info.image_std) == (info.image_mean, info.image_std)  # facts == load
    pipeline = pipeline_from_spec(spec, tokenizer, info)
    ours = pipeline.pixels(Sample(id="0", source="x", dataset="x", turns=(Turn("user", "<image>"),), images=(str(image),)))
    theirs = AutoImageProcessor.from_pretrained(str(siglip_base))(images=[Image.open(image)],
                                                                  return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape
    assert float((ours - theirs).abs().max()) <= 1e-5


def test_a_siglip_tower_without_a_preprocessor_file_gets_siglips_values(tmp_path):
    base = make_tiny_llava_hf(tmp_path / "base", vision="siglip", select_strategy="full", feature_layer=-1)
    config, _ = _config(tmp_path, base)
    info, _ = model_facts(load_config(config).model)
    assert normalisation_of(info) == ((0.5,) * 3, (0.5,) * 3)


def test_a_clip_llava_base_keeps_clips_values(tmp_path):
    base = make_tiny_llava_hf(tmp_path / "base")
    config, _ = _config(tmp_path, base)
    info, _ = model_facts(load_config(config).model)
    assert normalisation_of(info) == (LLAVA.mean, LLAVA.std)


@pytest.mark.battery("images", was="silent")
def test_the_export_of_a_siglip_llava_run_writes_siglips_mean_and_std(siglip_base, tmp_path):
    config, _ = _config(tmp_path, siglip_base)
    runner = CliRunner()
    work = tmp_path / "work"
    result = runner.invoke(main, ["train", str(config), "--work-dir", str(work), "--deepspeed", "none"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = tmp_path / "hf"
    result = runner.invoke(main, ["convert", str(work / "checkpoint-3"), str(out), "--to", "hf", "--verify",
                                  "--dtype", "fp32"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    written = json.loads((out / "preprocessor_config.json").read_text())
    assert (written["image_mean"], written["image_std"]) == (SIGLIP, SIGLIP)
