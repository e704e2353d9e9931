"""Model directories whose weights cannot be read as they are: one line naming the file, for chat and eval."""
import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vlft.cli import main
from vlft.errors import CheckpointError
from vlft.export.writers import write_sharded
from vlft.model.layouts import SAFETENSORS_INDEX, read_safetensors_dir, read_safetensors_header, safetensors_files


@pytest.fixture()
def eval_file(tmp_path):
    Image.new("RGB", (56, 56), (200, 30, 30)).save(tmp_path / "dish.png")
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"id": "q0", "image": "dish.png", "question": "Which dish?",
                                "choices": ["rice", "dumplings"], "answer": "B"}) + "\n")
    return path


@pytest.fixture()
def sharded(tiny_dir, tmp_path):
    """A copy of the tiny InternVL in three shards + index, as `vlft merge` writes them."""
    model = tmp_path / "sharded"
    shutil.copytree(tiny_dir["internvl_hf"], model)
    state = read_safetensors_dir(model)
    (model / "model.safetensors").unlink()
    write_sharded(state.items(), model, dtype=None, max_shard_size=sum(t.nbytes for t in state.values()) // 3)
    assert len(list(model.glob("model-*.safetensors"))) >= 3
    return model


def _pickle_only(tiny_dir, tmp_path):
    model = tmp_path / "pickled"
    shutil.copytree(tiny_dir["internvl_hf"], model)
    (model / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, model / "pytorch_model.bin")
    return model


def _run(command, model, eval_file):
    args = ["--prompt", "hi", "--max-new-tokens", "2"] if command == "chat" else ["--data", str(eval_file)]
    result = CliRunner().invoke(main, [command, str(model), *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("command", ["chat", "eval"])
def test_a_pickle_only_model_directory_is_one_line_saying_how_to_resave_it(command, tiny_dir, tmp_path, eval_file):
    model = _pickle_only(tiny_dir, tmp_path)
    line = _run(command, model, eval_file)
    assert f"{model}: holds only pytorch_model.bin (pickle)" in line and "save_pretrained" in line


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("command", ["chat", "eval"])
def test_an_index_naming_a_missing_shard_is_one_line_naming_both(command, sharded, eval_file):
    gone = sorted(sharded.glob("model-*.safetensors"))[1]
    gone.unlink()
    line = _run(command, sharded, eval_file)
    assert str(sharded / SAFETENSORS_INDEX) in line and gone.name in line


@pytest.mark.battery("model-dirs", was="traceback")
@pytest.mark.parametrize("command", ["chat", "eval"])
@pytest.mark.parametrize("keep", ["header_cut", "data_cut"])
def test_a_truncated_shard_is_one_line_naming_it(command, keep, sharded, eval_file):
    shard = sorted(sharded.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    length = int.from_bytes(data[:8], "little")
    shard.write_bytes(data[:20] if keep == "header_cut" else data[:8 + length + 10])
    line = _run(command, sharded, eval_file)
    assert str(shard) in line and ("truncated" in line or "invalid header" in line)


def test_the_header_read_is_safetensors_own_and_a_sharded_directory_loads(sharded):
    from safetensors import safe_open

    files = safetensors_files(sharded)
    assert [f.name for f in files] == sorted(set(json.loads((sharded / SAFETENSORS_INDEX).read_text())
                                                 ["weight_map"].values()))
    for file in files:
        _, header = read_safetensors_header(file)
        with safe_open(str(file), framework="pt") as handle:
            assert sorted(k for k in header if k != "__metadata__") == sorted(handle.keys())
    result = CliRunner().invoke(main, ["chat", str(sharded), "--prompt", "hi", "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output


def test_a_stray_file_beside_an_index_is_not_read(sharded):
    """transformers follows the index; so do vlft's own readers (a copied-in file cannot double a tensor)."""
    shutil.copy(sorted(sharded.glob("model-*.safetensors"))[0], sharded / "stray.safetensors")
    assert "stray.safetensors" not in [f.name for f in safetensors_files(sharded)]


def test_a_directory_without_weights_still_says_so(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no \\*.safetensors weights"):
        safetensors_files(tmp_path)
