"""A checkpoint whose base directory changed since training: merge, convert and chat name what changed."""
import json
import shutil

import pytest
from click.testing import CliRunner

from vlft.cli import main
from vlft.errors import CheckpointError
from vlft.export import merge_checkpoint
from vlft.model.base_fingerprint import check_base, fingerprint
from vlft.model.layouts import CHECKPOINT_MARKER


def _quiet(_):
    """A `log` callback that prints nothing."""


def _own_copy(train_ckpt, tiny_base, tmp_path, *, with_fingerprint=True):
    """(checkpoint, base): copies of a train-like checkpoint and its base, the meta pointing at the copied base
    and holding its fingerprint as `vlft train` records it."""
    base, ckpt = tmp_path / "base", tmp_path / "ckpt"
    shutil.copytree(tiny_base("internvl_hf"), base)
    shutil.copytree(train_ckpt("internvl_lora"), ckpt)
    meta_file = ckpt / CHECKPOINT_MARKER
    meta = json.loads(meta_file.read_text())
    meta["config"]["model"]["path"] = meta["base_model"] = str(base)
    if with_fingerprint:
        meta["base_fingerprint"] = fingerprint(str(base))
    meta_file.write_text(json.dumps(meta))
    return ckpt, base


def _replace_by_another_model(base):
    from vlft.tiny.checkpoints import make_tiny_internvl_hf

    shutil.rmtree(base)
    make_tiny_internvl_hf(base, seed=1)  # same architecture, same file sizes, other weights


def test_an_unchanged_base_merges(train_ckpt, tiny_base, tmp_path):
    ckpt, _ = _own_copy(train_ckpt, tiny_base, tmp_path)
    assert (merge_checkpoint(ckpt, tmp_path / "out", log=_quiet) / "config.json").is_file()


@pytest.mark.battery("checkpoints", was="silent")
def test_a_base_replaced_by_another_model_of_the_same_shape_is_refused_naming_the_weights(train_ckpt, tiny_base,
                                                                                          tmp_path):
    ckpt, base = _own_copy(train_ckpt, tiny_base, tmp_path)
    _replace_by_another_model(base)
    with pytest.raises(CheckpointError) as failure:
        merge_checkpoint(ckpt, tmp_path / "out", log=_quiet)
    message = str(failure.value)
    assert message.startswith(f"{ckpt}: the base model changed since training")
    assert f"{base / 'model.safetensors'}: tensors or weights differ from training" in message
    assert "trained on another base" in message and len(message.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.battery("checkpoints", was="traceback")
@pytest.mark.parametrize("command", ["merge", "convert", "convert-verified", "chat"])
def test_a_base_whose_files_changed_is_one_line_for_every_command(command, train_ckpt, tiny_base, tmp_path):
    ckpt, base = _own_copy(train_ckpt, tiny_base, tmp_path)
    weights = base / "model.safetensors"
    shutil.copy(weights, base / "model-00001-of-00001.safetensors")  # another model's files copied over it
    with weights.open("ab") as f:
        f.write(b"\0" * 16)
    args = {"merge": [str(tmp_path / "out")], "convert": [str(tmp_path / "out"), "--to", "hf", "--no-verify"],
            "convert-verified": [str(tmp_path / "out"), "--to", "hf", "--verify"],  # merges in memory
            "chat": ["--prompt", "hi"]}[command]
    result = CliRunner().invoke(main, [command.split("-")[0], str(ckpt), *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    size = weights.stat().st_size
    assert f"{weights}: size {size - 16} at training, {size} now" in lines[0]
    assert "model-00001-of-00001.safetensors: new since training" in lines[0]


@pytest.mark.battery("checkpoints", was="traceback")
def test_without_a_fingerprint_a_base_holding_a_tensor_twice_is_one_line_not_written_twice(train_ckpt, tiny_base,
                                                                                           tmp_path):
    ckpt, base = _own_copy(train_ckpt, tiny_base, tmp_path, with_fingerprint=False)  # a checkpoint from before
    shutil.copy(base / "model.safetensors", base / "model-copy.safetensors")
    result = CliRunner().invoke(main, ["merge", str(ckpt), str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "written twice" not in lines[0], result.stderr
    assert f"{base}: tensor" in lines[0] and "stored twice" in lines[0] and "model-copy.safetensors" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_from_before_fingerprints_is_not_checked(train_ckpt, tiny_base, tmp_path):
    ckpt, base = _own_copy(train_ckpt, tiny_base, tmp_path, with_fingerprint=False)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps(config, indent=4))  # same model, other bytes
    merge_checkpoint(ckpt, tmp_path / "out", log=_quiet)


def test_a_parts_base_is_fingerprinted_per_part(tiny_dir, tmp_path):
    vision, llm = tmp_path / "vision", tmp_path / "llm"
    shutil.copytree(tiny_dir["internvl_vision"], vision)
    shutil.copytree(tiny_dir["internvl_llm"], llm)
    parts = {"vision": str(vision), "llm": str(llm)}
    recorded = json.loads(json.dumps(fingerprint(parts)))  # as stored in the checkpoint's JSON
    check_base(recorded, parts, where="ckpt")
    config = json.loads((llm / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (llm / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"ckpt: the base model changed since training: "
                                              f"{llm / 'config.json'}: "):
        check_base(recorded, parts, where="ckpt")
    shutil.rmtree(vision)
    with pytest.raises(CheckpointError, match=f"{vision}: no such directory now"):
        check_base(recorded, parts, where="ckpt")


def test_the_fingerprint_reads_no_weights_whole(tiny_dir, monkeypatch):
    """Headers and a few KiB per file: the cost does not grow with the model."""
    from pathlib import Path

    read = []
    original = Path.read_bytes

    def counting(self):
        read.append(self.name)
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    printed = fingerprint(tiny_dir["internvl_hf"])
    assert set(printed["files"]) == {"config.json", "model.safetensors"}
    assert read == ["config.json"]
