"""A config held against its base's config.json before anything heavy: a family or tiling mode the base does not
take is one line naming the setting and the value the base wants; what the config leaves unset is the base's."""
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from vlft.cli import main
from vlft.model.base_settings import load_config_on_base
from vlft.shipped import shipped_configs
from vlft.tiny.checkpoints import TINY_PINPOINTS, make_tiny_llava_next_hf, make_tiny_llava_onevision_hf


@pytest.fixture(scope="module")
def anyres_bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("anyres_bases")
    return {"llava_next": make_tiny_llava_next_hf(root / "next"),
            "llava_onevision": make_tiny_llava_onevision_hf(root / "onevision")}


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def _data(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (width, height) in enumerate([(100, 60), (60, 100)]):
        Image.effect_noise((width, height), 60).convert("RGB").save(root / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "noise"}]})
    (root / "train.json").write_text(json.dumps(rows))
    return root / "train.json"


def _config(tmp_path: Path, base: Path, *, model=None, data=None) -> Path:
    sections = {"model": {"path": str(base), "connector": {"downsample_ratio": 1.0}, **(model or {})},
                "data": {"datasets": [{"path": str(_data(tmp_path / "data"))}], "max_length": 512, **(data or {})}}
    config = tmp_path / "run.py"
    config.write_text("".join(f"{key} = {value!r}\n" for key, value in sections.items()))
    return config


@pytest.mark.battery("configs", was="traceback")
@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_the_llava_1_5_config_on_an_anyres_base_fails_at_check_data_naming_the_tiling_the_base_wants(
        anyres_bases, family):
    config = shipped_configs()["llava_v1_5_7b_lora"]
    result = CliRunner().invoke(main, ["check-data", str(config), "--cfg-options",
                                       f"model_path={anyres_bases[family]}"])
    assert result.exit_code == 2
    (line,) = _lines(result.output)
    assert line.startswith(f"error: {config}: model.path={anyres_bases[family]}: the base is LLaVA-")
    assert f"model.family={family!r} (the config has 'llava')" in line
    assert "data.tiling.mode='anyres' (the config has 'pad_square')" in line


@pytest.mark.battery("configs", was="traceback")
def test_train_refuses_the_same_config_before_it_loads_the_model_or_writes_anything(anyres_bases, tmp_path):
    config = shipped_configs()["llava_v1_5_7b_lora"]
    work = tmp_path / "work"
    result = CliRunner().invoke(main, ["train", str(config), "--work-dir", str(work), "--deepspeed", "none",
                                       "--cfg-options", f"model_path={anyres_bases['llava_next']}"])
    assert result.exit_code == 2
    (line,) = _lines(result.output)
    assert "data.tiling.mode='anyres'" in line and "vlft train" not in result.output
    assert not work.exists()


def test_internvl_tiling_on_a_llava_base_names_the_mode_llava_tiles_with(tiny_dir, tmp_path):
    config = _config(tmp_path, tiny_dir["llava_hf"], model={"family": "llava"},
                     data={"tiling": {"mode": "dynamic", "max_tiles": 6}})
    result = CliRunner().invoke(main, ["check-data", str(config)])
    assert result.exit_code == 2
    (line,) = _lines(result.output)
    assert line.endswith(": the base is LLaVA, which needs data.tiling.mode='pad_square' (the config has 'dynamic')")


@pytest.mark.parametrize("layout", ["internvl_hf", "internvl_chat_qwen2"])
def test_the_llava_family_on_an_internvl_folder_names_the_family_the_base_is(tiny_dir, tmp_path, layout):
    config = _config(tmp_path, tiny_dir[layout], model={"family": "llava"})
    for args in (["check-data", str(config)], ["train", str(config), "--work-dir", str(tmp_path / "work")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2
        (line,) = _lines(result.output)
        assert line.endswith(": the base is InternVL, which needs model.family='internvl' (the config has 'llava')")


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
def test_an_unset_tiling_takes_the_bases_and_check_data_says_so_in_one_line(anyres_bases, tmp_path, family):
    config = _config(tmp_path, anyres_bases[family], model={"family": family},
                     data={"template": "vicuna_v1" if family == "llava_next" else "chatml"})
    result = CliRunner().invoke(main, ["check-data", str(config)])
    assert result.exit_code == 0, result.output
    notes = [line for line in _lines(result.output) if line.startswith("note:")]
    name = {"llava_next": "LLaVA-NeXT", "llava_onevision": "LLaVA-OneVision"}[family]
    assert notes == [f"note: the base in model.path is {name}: its data.tiling={{'mode': 'anyres'}} is taken, which "
                     f"the config leaves unset (tiling from the {name} default)"]
    spec, _ = load_config_on_base(config)
    assert spec.data.tiling.mode == "anyres" and spec.model.family == family


def test_a_config_that_sets_what_the_base_wants_gets_no_note(anyres_bases, tmp_path):
    config = _config(tmp_path, anyres_bases["llava_next"], model={"family": "llava_next"},
                     data={"tiling": {"mode": "anyres"}, "template": "vicuna_v1"})
    assert load_config_on_base(config)[1] == []


def test_an_unset_family_and_tiling_are_the_bases_and_said_in_one_note(anyres_bases, tmp_path):
    config = _config(tmp_path, anyres_bases["llava_onevision"], data={"template": "chatml"})
    spec, notes = load_config_on_base(config)
    assert spec.model.family == "llava_onevision" and spec.data.tiling.mode == "anyres"
    (note,) = notes
    assert "model.family='llava_onevision' and data.tiling={'mode': 'anyres'} are taken" in note


def test_an_internvl_chat_base_gives_its_own_tile_budget_to_the_keys_the_config_leaves_unset(tiny_dir, tmp_path):
    base = tmp_path / "chat"
    shutil.copytree(tiny_dir["internvl_chat_qwen2"], base)
    config_json = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config_json, "max_dynamic_patch": 4, "use_thumbnail": False}))
    spec, notes = load_config_on_base(_config(tmp_path, base, model={"connector": {"downsample_ratio": 0.5}}))
    tiling = spec.data.tiling
    assert (tiling.mode, tiling.max_tiles, tiling.use_thumbnail) == ("dynamic", 4, False)
    assert str(base / "config.json") in notes[0]
    spec, _ = load_config_on_base(_config(tmp_path, base, model={"connector": {"downsample_ratio": 0.5}},
                                          data={"tiling": {"max_tiles": 2}}))
    assert (spec.data.tiling.max_tiles, spec.data.tiling.use_thumbnail) == (2, False)


def test_a_next_bases_preprocessor_config_gives_its_pinpoints(anyres_bases, tmp_path):
    base = tmp_path / "next"
    shutil.copytree(anyres_bases["llava_next"], base)
    (base / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "LlavaNextImageProcessor", "image_grid_pinpoints": [list(p) for p in TINY_PINPOINTS]}))
    spec, notes = load_config_on_base(_config(tmp_path, base, model={"family": "llava_next"},
                                              data={"template": "vicuna_v1"}))
    assert spec.data.tiling.grid_pinpoints == [list(p) for p in TINY_PINPOINTS]
    assert str(base / "preprocessor_config.json") in notes[0]
