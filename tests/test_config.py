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
    from vlft.families import FAMILIES

    spec = load_config(shipped_configs()[name])
    assert spec.model.family in FAMILIES


def test_copy_config_makes_base_paths_absolute(tmp_path):
    dest = copy_shipped_config("internvl2_5_1b_lora", tmp_path / "mine.py")
    spec = load_config(dest)
    assert spec.schedule.lr == 1e-4
    with pytest.raises(ConfigError, match="already exists"):
        copy_shipped_config("internvl2_5_1b_lora", dest)
    with pytest.raises(ConfigError, match="did you mean 'internvl2_5_1b_lora'"):
        copy_shipped_config("internvl25_1b_lora", tmp_path / "x.py")


@pytest.fixture(scope="module")
def tiny_anyres(tmp_path_factory):
    """Tiny LLaVA-NeXT and LLaVA-OneVision bases (the session's tiny_dir holds the other families)."""
    from vlft.tiny.checkpoints import make_tiny_llava_next_hf, make_tiny_llava_onevision_hf

    root = tmp_path_factory.mktemp("tiny_anyres")
    return {"llava_next": make_tiny_llava_next_hf(root / "next"),
            "llava_onevision": make_tiny_llava_onevision_hf(root / "onevision")}


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_builds_against_a_tiny_checkpoint(name, tiny_dir, tiny_anyres):
    """Each shipped config, pointed at a tiny checkpoint of its family, passes the base's check and builds and
    wraps its model."""
    from vlft.model.adapters import apply_training_policy
    from vlft.model.base_settings import load_config_on_base
    from vlft.model.load import build_vlm
    from vlft.model.report import trainable_report

    raw = load_config(shipped_configs()[name])
    family = raw.model.family
    if raw.model.path is None:
        overrides = [f"model.vision.path={tiny_dir[family + '_vision']}", f"model.llm.path={tiny_dir[family + '_llm']}"]
    else:
        path = {"internvl": tiny_dir["internvl_chat_internlm2" if "internvl2_2b" in name else "internvl_hf"],
                "llava": tiny_dir["llava_hf"], **tiny_anyres}[family]
        overrides = [f"model.path={path}"]
    spec, notes = load_config_on_base(shipped_configs()[name], overrides)
    assert notes == []                                   # a shipped config says what its base wants
    model, tokenizer = build_vlm(spec.model)
    apply_training_policy(model, spec.model)
    modes = {r.part: r.mode for r in trainable_report(model)}
    assert modes["multi_modal_projector"] == ("full" if spec.model.connector.train else "frozen")
    assert modes["language_model"] == spec.model.llm.train


# ---------------------------------------------------------------- Settings overrides (--cfg-options NAME=VALUE)

SETTINGS = """_base_ = ['./base.py']
lr_value = 3e-4
data_path = 'data/train.json'
lora_r = 8
work = '{{ fileDirname }}/work'
model = dict(family='internvl', path='/m', llm=dict(lora=dict(r=lora_r, alpha=2 * lora_r)))
data = dict(datasets=[dict(path=data_path)])
schedule = dict(lr=lr_value)
engine = dict(work_dir=work)
"""


def _settings_config(tmp_path):
    _write(tmp_path, "schedule = dict(weight_decay=0.5)\nbase_only = 3\n", "base.py")
    return _write(tmp_path, SETTINGS)


@pytest.mark.battery("configs", was="silent")
def test_a_settings_override_changes_the_data_path_and_lora_alpha_follows_lora_r():
    config = shipped_configs()["internvl2_5_1b_lora"]
    spec = load_config(config, ["data_path=other/train.json", "lora_r=64", "max_tiles=3"])
    assert spec.data.datasets[0].path == "other/train.json"
    assert (spec.model.llm.lora.r, spec.model.llm.lora.alpha) == (64, 128)    # alpha = 2 * lora_r in the config
    assert spec.data.tiling.max_tiles == 3
    assert load_config(config).data.datasets[0].path == "data/train.json"  # the file itself is untouched


def test_a_settings_override_keeps_bases_and_file_variables_and_writes_nothing_next_to_the_config(tmp_path):
    config = _settings_config(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    spec = load_config(config, ["lr_value=1", "data_path=2024", "schedule.max_steps=5"])
    assert spec.schedule.lr == 1.0 and isinstance(spec.schedule.lr, float)  # an int for a float setting is fine
    assert spec.data.datasets[0].path == "2024"                          # a str setting takes the text
    assert spec.schedule.weight_decay == 0.5 and spec.schedule.max_steps == 5
    assert spec.engine.work_dir == f"{tmp_path}/work"                    # {{ fileDirname }} is still the config's
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("option, message", [
    ("lora_r=abc", "--cfg-options lora_r=abc: lora_r is int in .*cfg.py \\(8\\), got str"),
    ("lora_r=2.5", "lora_r is int in .* got float"),
    ("lr_value=true", "lr_value is float in .* got bool"),
    ("lora_rr=4", "--cfg-options lora_rr: unknown key; did you mean 'lora_r'\\?"),
    ("data_path.x=4", "'data_path' is a Settings value of .*override it whole: --cfg-options data_path=VALUE"),
    ("base_only=4", "'base_only' is set in a _base_ file of .*cfg.py, and only the config's own Settings block"),
])
def test_a_bad_settings_override_is_refused_naming_it(tmp_path, option, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_settings_config(tmp_path), [option])


def test_the_unknown_key_list_names_each_key_once(tmp_path):
    cfg = _write(tmp_path, "model = dict(family='internvl', path='/m')\nschedule = dict(lr=1.0)\n")
    with pytest.raises(ConfigError) as error:
        load_config(cfg, ["qqqqqqq=1"])
    listed = str(error.value).split("valid keys: ")[1].split(", ")
    assert listed == ["model", "data", "schedule", "engine"]


@pytest.mark.battery("configs", was="silent")
def test_overriding_lora_r_alone_keeps_alpha_over_r():
    config = shipped_configs()["internvl2_5_1b_lora"]                    # r 32, alpha 64
    lora = load_config(config, ["model.llm.lora.r=64"]).model.llm.lora
    assert (lora.r, lora.alpha) == (64, 128)
    lora = load_config(config, ["model.llm.lora.r=64", "model.llm.lora.alpha=16"]).model.llm.lora
    assert (lora.r, lora.alpha) == (64, 16)                              # an explicit alpha is taken as given


# ---------------------------------------------------------------- what the machine can run, numbers, imports


@pytest.mark.battery("configs", was="traceback")
def test_flash_attention_without_flash_attn_is_one_line_with_the_install_command(tmp_path, monkeypatch):
    import importlib.util

    from click.testing import CliRunner

    from vlft.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "flash_attn" else find_spec(name, *a))
    cfg = _write(tmp_path, "model = dict(family='internvl', path='/m', attn_implementation='flash_attention_2')\n")
    result = CliRunner().invoke(main, ["check-data", str(cfg)])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install flash-attn --no-build-isolation" in lines[0], result.stderr
    assert "model.attn_implementation='flash_attention_2'" in lines[0]


def test_model_dtype_takes_the_cli_spellings_and_keeps_the_long_names(tmp_path):
    for short, long in (("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32"), ("bfloat16", "bfloat16")):
        spec = load_config(_write(tmp_path, f"model = dict(family='internvl', path='/m', dtype={short!r})\n"))
        assert spec.model.dtype == long
    spec = spec_from_dict({"model": {"family": "internvl", "path": "/m",
                                     "llm": {"quantization": {"compute_dtype": "bf16"}}}})
    assert spec.model.llm.quantization.compute_dtype == "bfloat16"
    with pytest.raises(ConfigError, match="model.dtype='bf8' is not one of"):
        load_config(_write(tmp_path, "model = dict(family='internvl', path='/m', dtype='bf8')\n"))


def _traceback_before(*params):
    return [pytest.param(*p, marks=pytest.mark.battery("configs", was="traceback"), id=p[0]) for p in params]


def _silent_before(*params):
    return [pytest.param(*p, marks=pytest.mark.battery("configs", was="silent"), id=p[0]) for p in params]


@pytest.mark.parametrize("option, message", [
    *_traceback_before(
        ("schedule.lr=-0.01", "schedule.lr must be >= 0 (0 changes no weight: an export fidelity check), got -0.01"),
        ("model.llm.lora.dropout=1.5", "model.llm.lora.dropout must be in [0, 1), got 1.5"),
        ("schedule.connector_lr=-1e-4", "schedule.connector_lr must be None or >= 0, got -0.0001"),
        ("schedule.vision_lr=-1e-4", "schedule.vision_lr must be None or >= 0, got -0.0001"),
        ("schedule.weight_decay=-0.1", "schedule.weight_decay must be >= 0, got -0.1"),
        ("model.llm.lora.alpha=0", "model.llm.lora.alpha must be positive, got 0"),
    ),
    *_silent_before(
        ("schedule.max_steps=-1", "schedule.max_steps must be None or >= 1, got -1"),
        ("schedule.max_steps=0", "schedule.max_steps must be None or >= 1, got 0"),
        ("schedule.epochs=0", "schedule.epochs must be positive (or set schedule.max_steps), got 0.0"),
        ("schedule.epochs=-3", "schedule.epochs must be positive (or set schedule.max_steps), got -3.0"),
        ("schedule.warmup_ratio=2.0", "schedule.warmup_ratio must be in [0, 1), got 2.0"),
        ("schedule.min_lr_ratio=1.5", "schedule.min_lr_ratio must be in [0, 1], got 1.5"),
        ("schedule.max_grad_norm=-1", "schedule.max_grad_norm must be >= 0 (0: no clipping), got -1.0"),
        ("engine.save_steps=-1", "engine.save_steps must be >= 0 (0: only the final checkpoint), got -1"),
        ("engine.logging_steps=0", "engine.logging_steps must be >= 1, got 0"),
        ("engine.save_total_limit=0", "engine.save_total_limit must be None or >= 1, got 0"),
        ("engine.sample_every=-1", "engine.sample_every must be >= 0 (0: never), got -1"),
        ("engine.eval_steps=-1", "engine.eval_steps must be >= 0 (0: only at the end), got -1"),
        ("data.val_split=1.0", "data.val_split must be in [0, 1) (a fraction of the samples), got 1.0"),
        ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
        ("data.tiling.max_tiles=0", "data.tiling.max_tiles must be >= 1, got 0"),
        ("data.datasets=[{'path':'a.json','repeat':0}]", "data.datasets[0].repeat must be positive, got 0.0"),
        ("model.vision.train='lora'", None),
        ("model.connector.downsample_ratio=0", "model.connector.downsample_ratio must be in (0, 1], got 0.0"),
    ),
])
def test_a_number_out_of_range_is_refused_naming_the_key(tmp_path, option, message):
    cfg = _write(tmp_path, MINIMAL)
    if message is None:                                                 # in range: loads
        load_config(cfg, [option])
        return
    with pytest.raises(ConfigError) as error:
        load_config(cfg, [option])
    assert str(error.value) == f"{cfg}: {message}"


@pytest.mark.battery("configs", was="silent")
def test_a_config_may_import_modules_next_to_its_base(tmp_path):
    _write(tmp_path, "schedule = dict(lr=1.0)\n", "base.py")
    cfg = _write(tmp_path, "import os\nfrom pathlib import Path\nfrom math import sqrt\n_base_ = ['./base.py']\n"
                           "model = dict(family='internvl', path=os.path.join('/m', str(Path('x'))))\n"
                           "schedule = dict(max_grad_norm=sqrt(4.0))\n")
    spec = load_config(cfg, ["schedule.seed=3"])
    assert spec.model.path == "/m/x" and spec.schedule.lr == 1.0 and spec.schedule.max_grad_norm == 2.0


def test_mmengine_lazy_import_configs_are_refused_with_the_fix(tmp_path):
    cfg = _write(tmp_path, "from mmengine.config import read_base\nwith read_base():\n    from .base import *\n"
                           + MINIMAL)
    with pytest.raises(ConfigError, match=r"`with read_base\(\):` .* is not supported; inherit with `_base_ = "):
        load_config(cfg)


@pytest.mark.parametrize("name, objective", [("internvl2_5_1b_dpo", "dpo"), ("internvl2_5_1b_mpo", "mpo"),
                                             ("llava_v1_5_7b_dpo", "dpo")])
def test_the_shipped_preference_configs_train_unpacked_pairs_against_the_adapters_off(name, objective):
    spec = load_config(shipped_configs()[name])
    assert spec.schedule.objective == objective and not spec.data.packing
    # a frozen connector keeps "the adapters off" the start of training: the reference needs no pass
    assert not spec.model.connector.train and spec.model.llm.train == "lora"
    if objective == "mpo":
        weights = (spec.schedule.preference_weight, spec.schedule.quality_weight, spec.schedule.generation_weight)
        assert weights == (0.8, 0.2, 1.0)
