"""What a killed export leaves is cleaned up by the next one; damaged model directories are one line for convert."""
import shutil
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from vlft.cli import main
from vlft.export import convert_checkpoint, merge_checkpoint
from vlft.export.writers import INDEX_NAME


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _leftover(out, pid):
    staging = out.parent / f"{out.name}.tmp-{pid}"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"\0" * 1024)  # model-sized, in real life
    return staging


@pytest.mark.battery("disk-full", was="lost")
@pytest.mark.parametrize("export", ["merge", "convert"])
def test_the_next_export_removes_a_killed_exports_staging_dir_and_says_so(export, train_ckpt, tmp_path):
    out = tmp_path / "out"
    dead = _leftover(out, _dead_pid())
    alive_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = _leftover(out, alive_process.pid)  # an export running now: never touched
        said = []
        if export == "merge":
            merge_checkpoint(train_ckpt("internvl_lora"), out, log=said.append)
        else:
            convert_checkpoint(train_ckpt("internvl_lora"), out, verify=False, log=said.append)
    finally:
        alive_process.kill()
        alive_process.wait()
    assert not dead.exists() and alive.is_dir() and (out / "config.json").is_file()
    removed = [line for line in said if line.startswith("removed ")]
    assert len(removed) == 1 and str(dead) in removed[0] and str(alive) not in removed[0]


def test_a_name_that_only_looks_like_staging_is_left_alone(train_ckpt, tmp_path):
    out = tmp_path / "out"
    kept = [tmp_path / "out.tmp-notes", tmp_path / "out.tmp-99x"]
    for path in kept:
        path.mkdir()
    (tmp_path / f"out.tmp-{_dead_pid()}.txt").write_text("a file of the user's")
    merge_checkpoint(train_ckpt("internvl_lora"), out, log=lambda _: None)
    assert all(path.is_dir() for path in kept) and len(list(tmp_path.glob("out.tmp-*.txt"))) == 1


def _convert_line(source, tmp_path):
    result = CliRunner().invoke(main, ["convert", str(source), str(tmp_path / "converted"), "--to", "hf"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not (tmp_path / "converted").exists()
    return lines[0]


@pytest.fixture()
def merged_copy(merged_fp32, tmp_path):
    copy = tmp_path / "merged"
    shutil.copytree(merged_fp32("internvl_lora"), copy)
    return copy


@pytest.mark.battery("model-dirs", was="traceback")
def test_convert_of_a_merged_dir_whose_index_names_a_missing_shard_is_one_line(merged_copy, tmp_path):
    shard = next(merged_copy.glob("*.safetensors"))
    shard.unlink()
    line = _convert_line(merged_copy, tmp_path)
    assert str(merged_copy / INDEX_NAME) in line and shard.name in line


@pytest.mark.battery("model-dirs", was="traceback")
def test_convert_of_a_merged_dir_with_a_truncated_shard_is_one_line_naming_it(merged_copy, tmp_path):
    shard = next(merged_copy.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:1000])
    assert str(shard) in _convert_line(merged_copy, tmp_path)


@pytest.mark.battery("model-dirs", was="traceback")
def test_convert_of_a_merged_dir_holding_only_a_pickle_is_one_line(merged_copy, tmp_path):
    for file in [*merged_copy.glob("*.safetensors"), merged_copy / INDEX_NAME]:
        file.unlink()
    torch.save({"w": torch.zeros(2)}, merged_copy / "pytorch_model.bin")
    assert f"{merged_copy}: holds only pytorch_model.bin (pickle)" in _convert_line(merged_copy, tmp_path)


@pytest.mark.battery("model-dirs", was="traceback")
def test_merge_of_a_checkpoint_whose_base_is_a_pickle_is_one_line(train_ckpt, tiny_base, tmp_path):
    import json

    from vlft.model.layouts import CHECKPOINT_MARKER

    base, ckpt = tmp_path / "base", tmp_path / "ckpt"
    shutil.copytree(tiny_base("internvl_hf"), base)
    shutil.copytree(train_ckpt("internvl_lora"), ckpt)
    meta = json.loads((ckpt / CHECKPOINT_MARKER).read_text())
    meta["config"]["model"]["path"] = meta["base_model"] = str(base)
    (ckpt / CHECKPOINT_MARKER).write_text(json.dumps(meta))
    (base / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, base / "pytorch_model.bin")
    result = CliRunner().invoke(main, ["merge", str(ckpt), str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"{base}: holds only pytorch_model.bin (pickle)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
