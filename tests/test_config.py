"""Config loading: _base_ inheritance, --cfg-options, typed validation, every shipped config."""
import pytest

from vlft.config import load_config, parse_cfg_options, spec_from_dict, spec_to_dict
from vlft.errors import ConfigError
from vlft.shipped import copy_shipped_config, shipped_configs


def _write(tmp_path, text, name="cfg.py"):
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = "model = dict(family='internvl', path='/m')\n"


def test_settings_block_and_overrides(tmp_path):
    cfg = _write(tmp_path, "lr_value = 3e-4\nmodel = dict(family='internvl', path='/m')\nschedule = dict(lr=lr_value)\n")
    spec = load_config(cfg, ["schedule.lr=1e-5", "model.llm.lora.r=8", "data.packing=true"])
    assert spec.schedule.lr == 1e-5 and spec.model.llm.lora.r == 8 and spec.data.packing is True


def test_base_inheritance_merges_dicts(tmp_path):
    _write(tmp_path, "schedule = dict(lr=1.0, micro_batch_size=2)\n", "base.py")
    cfg = _write(tmp_path, "_base_ = ['./base.py']\n" + MINIMAL + "schedule = dict(lr=2.0)\n")
    spec = load_config(cfg)
    assert spec.schedule.lr == 2.0 and spec.schedule.micro_batch_size == 2


@pytest.mark.parametrize("text, message", [
    (MINIMAL + "schedule = dict(lrr=1.0)\n", "unknown key 'schedule.lrr'; did you mean 'lr'"),
    (MINIMAL + "shedule = dict(lr=1.0)\n", "unknown section 'shedule'; did you mean 'schedule'"),
    ("model = dict(family='internvl', path='/m', llm=dict(lora=dict(rank=4)))\n",
     "unknown key 'model.llm.lora.rank'; did you mean 'r'"),
    ("model = dict(family='internvl', path='/m', llm=dict(train='full', quantization=dict(bits=4)))\n",
     "model.llm.quantization and model.llm.train='full' contradict"),
    ("model = dict(family='llava', path='/m', connector=dict(downsample_ratio=1.0))\n",
     "model.family='llava' and data.tiling.mode='dynamic' contradict"),
    (MINIMAL + "schedule = dict(micro_batch_size='4')\n", "schedule.micro_batch_size must be int"),
    (MINIMAL + "schedule = dict(global_batch_size=10, micro_batch_size=4)\n", "not divisible"),
    (MINIMAL + "data = dict(tiling=dict(min_tiles=5, max_tiles=2))\n", "data.tiling.min_tiles=5 and data.tiling.max_tiles=2"),
    ("model = dict(family='internvl')\n", "model.path is not set"),
    (MINIMAL + "data = dict(pack_length=0)\n", "data.pack_length must be positive"),
])
def test_bad_configs_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_config(_write(tmp_path, text))


def test_unknown_override_and_missing_file(tmp_path):
    cfg = _write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match="did you mean 'schedule'"):
        load_config(cfg, ["schedul.lr=1"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.py")


def test_parse_cfg_options():
    assert parse_cfg_options(["a=1", "b=[1,2]", "c=hello", "d=True", "e=none"]) == {
        "a": 1, "b": [1, 2], "c": "hello", "d": True, "e": None}
    with pytest.raises(ConfigError, match="key=value"):
        parse_cfg_options(["novalue"])


def test_packed_rows_default_to_max_length():
    spec = spec_from_dict({"model": {"family": "internvl", "path": "/m"}, "data": {"max_length": 900}})
    assert spec.data.packed_row_length == 900
    spec = spec_from_dict({"model": {"family": "internvl", "path": "/m"}, "data": {"max_length": 900, "pack_length": 300}})
    assert spec.data.packed_row_length == 300


def test_spec_round_trips_through_dict():
    spec = spec_from_dict({"model": {"family": "internvl", "path": "/m", "llm": {"quantization": {"bits": 4}}}})
    assert spec_from_dict(spec_to_dict(spec)) == spec


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_loads(name):
    spec = load_config(shipped_configs()[name])
    assert spec.model.family in ("internvl", "llava")


def test_copy_config_makes_base_paths_absolute(tmp_path):
    dest = copy_shipped_config("internvl2_5_1b_lora", tmp_path / "mine.py")
    spec = load_config(dest)
    assert spec.schedule.lr == 1e-4
    with pytest.raises(ConfigError, match="already exists"):
        copy_shipped_config("internvl2_5_1b_lora", dest)
    with pytest.raises(ConfigError, match="did you mean 'internvl2_5_1b_lora'"):
        copy_shipped_config("internvl25_1b_lora", tmp_path / "x.py")


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_builds_against_a_tiny_checkpoint(name, tiny_dir):
    """Each shipped config, pointed at a tiny checkpoint of its family, builds and wraps its model."""
    from vlft.model.adapters import apply_training_policy
    from vlft.model.load import build_vlm
    from vlft.model.report import trainable_report

    raw = load_config(shipped_configs()[name])
    family = raw.model.family
    if raw.model.path is None:
        overrides = [f"model.vision.path={tiny_dir[family + '_vision']}", f"model.llm.path={tiny_dir[family + '_llm']}"]
    else:
        path = {"internvl": tiny_dir["internvl_chat_internlm2" if "internvl2_2b" in name else "internvl_hf"],
                "llava": tiny_dir["llava_hf"]}[family]
        overrides = [f"model.path={path}"]
    spec = load_config(shipped_configs()[name], overrides)
    model, tokenizer = build_vlm(spec.model)
    apply_training_policy(model, spec.model)
    modes = {r.part: r.mode for r in trainable_report(model)}
    assert modes["multi_modal_projector"] == ("full" if spec.model.connector.train else "frozen")
    assert modes["language_model"] == spec.model.llm.train
