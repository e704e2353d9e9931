"""Stage 1 from parts with OpenGVLab's InternViT release (`model_type: intern_vit_6b`, original key names) and
with a SigLIP tower: the release reads into transformers' InternVLVisionModel with the same features, and
check-data -> 3 connector-only steps -> convert --to hf --verify go through."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file

from vlft.cli import main
from vlft.errors import CheckpointError
from vlft.model.layouts import Layout, detect_layout
from vlft.model.vision_dirs import load_vision_encoder
from vlft.tiny.checkpoints import make_tiny_internvit_release, make_tiny_internvit_release_twin, make_tiny_parts


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("style", ["300m", "6b"])
def test_an_internvit_release_reads_as_a_vision_encoder_with_the_official_features(tmp_path, style):
    release = make_tiny_internvit_release(tmp_path / "vit", style=style)
    keys = set(load_file(str(release / "model.safetensors")))
    assert {"embeddings.class_embedding", "encoder.layers.0.attn.qkv.weight", "encoder.layers.1.ls1",
            "encoder.layers.0.norm1.weight"} <= keys  # the release's own names, not transformers'
    assert json.loads((release / "config.json").read_text())["model_type"] == "intern_vit_6b"
    assert detect_layout(release) is Layout.VISION

    ours = load_vision_encoder(release, dtype=torch.float32, attn_implementation="eager").eval()
    official = make_tiny_internvit_release_twin(style=style)  # transformers' InternVLVisionModel, same weights
    official.config._attn_implementation = "eager"
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        got = ours(pixel_values=pixels, output_hidden_states=True)
        want = official(pixel_values=pixels, output_hidden_states=True)
    assert type(ours).__name__ == "InternVLVisionModel"
    assert float((got.last_hidden_state - want.last_hidden_state).abs().max()) <= 1e-5
    assert float((got.hidden_states[-2] - want.hidden_states[-2]).abs().max()) <= 1e-5


@pytest.mark.battery("model-dirs", was="traceback")
def test_a_release_with_a_weight_of_another_model_is_one_line_naming_the_key(tmp_path):
    release = make_tiny_internvit_release(tmp_path / "vit")
    weights = load_file(str(release / "model.safetensors"))
    weights["clip_projector.norm.weight"] = torch.ones(4)
    save_file(weights, str(release / "model.safetensors"))
    with pytest.raises(CheckpointError, match="'clip_projector.norm.weight'"):
        load_vision_encoder(release, dtype=torch.float32, attn_implementation="eager")


def _captions(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, rgb) in enumerate([("a red square", (220, 30, 30)), ("a blue square", (30, 40, 220))] * 2):
        Image.new("RGB", (60 + 4 * i, 56), rgb).save(root / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": name}]})
    (root / "train.json").write_text(json.dumps(rows))
    return root / "train.json"


STAGE1 = {  # family, tower, tiling
    "internvit": ("internvl", "internvit", {"mode": "dynamic", "max_tiles": 2}),
    "siglip": ("llava", "siglip", {"mode": "pad_square"}),
}


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("case", sorted(STAGE1))
def test_stage1_from_parts_trains_the_connector_three_steps_and_exports_verified(tmp_path, case):
    family, tower, tiling = STAGE1[case]
    vision, llm = make_tiny_parts(tmp_path / "parts", family=family, vision=tower)
    sections = {
        "model": {"family": family, "vision": {"path": str(vision)}, "llm": {"path": str(llm), "train": "frozen"},
                  "attn_implementation": "eager",
                  "connector": {"downsample_ratio": 0.5 if family == "internvl" else 1.0}},
        "data": {"datasets": [{"path": str(_captions(tmp_path / "data"))}], "template": "plain", "max_length": 256,
                 "tiling": tiling},
        "schedule": {"max_steps": 3, "micro_batch_size": 1, "gradient_accumulation": 1, "lr": 1e-3},
        "engine": {"save_steps": 3, "logging_steps": 1, "sample_every": 0},
    }
    config = tmp_path / "stage1.py"
    config.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    runner = CliRunner()
    result = runner.invoke(main, ["check-data", str(config)])
    assert result.exit_code == 0, result.output
    work = tmp_path / "work"
    result = runner.invoke(main, ["train", str(config), "--work-dir", str(work), "--deepspeed", "none"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "language_model          frozen" in result.output
    trained = load_file(str(work / "checkpoint-3" / "trained.safetensors"))
    assert any(k.startswith("multi_modal_projector.") for k in trained)
    assert not any(k.startswith("vision_tower.") for k in trained)
    out = tmp_path / "hf"
    result = runner.invoke(main, ["convert", str(work / "checkpoint-3"), str(out), "--to", "hf", "--verify",
                                  "--dtype", "fp32"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "verify (hf)" in result.output
