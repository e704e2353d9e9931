"""The shard writer's files are safetensors files: the safetensors library and transformers read them back."""
import gc
import json
import weakref

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vlft.export import writers
from vlft.export.writers import INDEX_NAME, SINGLE_NAME, ShardWriter, safetensors_header, write_sharded


def _mixed_tensors():
    generator = torch.Generator().manual_seed(0)
    return {
        "a.bf16": torch.randn(3, 5, generator=generator).to(torch.bfloat16),
        "b.fp16": torch.randn(7, generator=generator).to(torch.float16),
        "c.fp32": torch.randn(2, 3, 4, generator=generator),
        "d.int64": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "e.int8": torch.tensor([-3, 0, 4], dtype=torch.int8),
        "f.bool": torch.tensor([True, False, True]),
        "g.scalar": torch.tensor(2.5),
        "h.empty": torch.zeros(0, 4),
        "i.strided": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),  # not contiguous
        "j.offset": torch.arange(10, dtype=torch.float32)[3:7],                # storage offset
    }


def test_a_shard_reads_back_through_safetensors_tensor_for_tensor(tmp_path):
    tensors = _mixed_tensors()
    report = write_sharded(tensors.items(), tmp_path, dtype=None, metadata={"source": "test"})
    assert report.weight_map == dict.fromkeys(tensors, SINGLE_NAME)
    loaded = load_file(str(tmp_path / SINGLE_NAME))
    assert list(loaded) == list(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
        assert torch.equal(loaded[name], tensor), name
    with safe_open(str(tmp_path / SINGLE_NAME), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt", "source": "test"}
    assert {p.name for p in tmp_path.iterdir()} == {SINGLE_NAME, INDEX_NAME}  # no data files left behind


def test_the_header_is_safetensors_own_for_the_same_tensors(tmp_path):
    """Our header bytes equal the library's for tensors laid out in the library's order."""
    tensors = {"x": torch.ones(2, 3, dtype=torch.bfloat16), "y": torch.zeros(4, dtype=torch.bfloat16)}
    save_file(tensors, str(tmp_path / "library.safetensors"), metadata={"format": "pt"})
    (tmp_path / "ours").mkdir()
    write_sharded(tensors.items(), tmp_path / "ours", dtype=None)
    assert (tmp_path / "ours" / SINGLE_NAME).read_bytes() == (tmp_path / "library.safetensors").read_bytes()
    entries = {"x": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
               "y": {"dtype": "BF16", "shape": [4], "data_offsets": [12, 20]}}
    header = safetensors_header(entries, {"format": "pt"})
    assert len(header) % 8 == 0 and (tmp_path / "library.safetensors").read_bytes().startswith(header)


def test_shards_split_at_the_cap_and_a_big_tensor_gets_its_own(tmp_path):
    tensors = {"t0": torch.ones(100), "t1": torch.ones(100), "big": torch.ones(1000), "t2": torch.ones(10)}
    report = write_sharded(tensors.items(), tmp_path, dtype="bf16", max_shard_size=450)
    files = ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
             "model-00003-of-00003.safetensors"]
    assert report.weight_map == {"t0": files[0], "t1": files[0], "big": files[1], "t2": files[2]}
    assert report.shard_bytes == {files[0]: 400, files[1]: 2000, files[2]: 20}
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["metadata"] == {"total_size": 2420, "total_parameters": 1210}
    assert index["weight_map"] == dict(sorted(report.weight_map.items()))
    for name, file in report.weight_map.items():
        loaded = load_file(str(tmp_path / file))[name]
        assert loaded.dtype == torch.bfloat16 and torch.equal(loaded, tensors[name].to(torch.bfloat16))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*files, INDEX_NAME])


def test_integer_tensors_keep_their_dtype_under_a_cast(tmp_path):
    write_sharded([("ids", torch.arange(4)), ("w", torch.ones(2, dtype=torch.float64))], tmp_path, dtype="fp16")
    loaded = load_file(str(tmp_path / SINGLE_NAME))
    assert loaded["ids"].dtype == torch.int64 and loaded["w"].dtype == torch.float16


def test_the_writer_keeps_no_tensor_once_added(tmp_path):
    """Memory does not grow with the shard: an added tensor is free to go as soon as add returns."""
    writer = ShardWriter(tmp_path, max_shard_bytes=10**9, dtype=None)
    tensor = torch.ones(1000)
    alive = weakref.ref(tensor)
    writer.add("w", tensor)
    del tensor
    gc.collect()
    assert alive() is None
    writer.close()
    assert torch.equal(load_file(str(tmp_path / SINGLE_NAME))["w"], torch.ones(1000))


def test_two_names_on_one_storage_are_written_twice(tmp_path):
    """Tied weights share storage; safetensors refuses that, so each name gets its own bytes."""
    shared = torch.randn(4, 4)
    write_sharded([("embed", shared), ("head", shared)], tmp_path, dtype=None)
    loaded = load_file(str(tmp_path / SINGLE_NAME))
    assert torch.equal(loaded["embed"], shared) and torch.equal(loaded["head"], shared)


def test_a_name_written_twice_is_refused(tmp_path):
    writer = ShardWriter(tmp_path, max_shard_bytes=100, dtype=None)
    writer.add("w", torch.ones(2))
    with pytest.raises(ValueError, match="'w' written twice"):
        writer.add("w", torch.ones(2))


def test_copy_falls_back_where_the_kernel_cannot_copy(tmp_path, monkeypatch):
    import errno
    import os

    def no_copy_file_range(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", no_copy_file_range)
    tensors = _mixed_tensors()
    write_sharded(tensors.items(), tmp_path, dtype=None)
    loaded = load_file(str(tmp_path / SINGLE_NAME))
    assert all(torch.equal(loaded[name], tensor) for name, tensor in tensors.items())


def test_copy_falls_back_where_the_kernel_copies_nothing(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(os, "copy_file_range", lambda *args: 0)
    tensors = _mixed_tensors()
    write_sharded(tensors.items(), tmp_path, dtype=None)
    loaded = load_file(str(tmp_path / SINGLE_NAME))
    assert all(torch.equal(loaded[name], tensor) for name, tensor in tensors.items())


def test_a_copy_that_stops_halfway_is_an_error_not_a_short_file(tmp_path, monkeypatch):
    import os

    real, calls = os.copy_file_range, []

    def eight_bytes_then_nothing(source, destination, count):
        calls.append(count)
        return real(source, destination, 8) if len(calls) == 1 else 0

    monkeypatch.setattr(os, "copy_file_range", eight_bytes_then_nothing)
    with pytest.raises(OSError, match="copied 8 of 64 bytes"):
        write_sharded([("w", torch.ones(16))], tmp_path, dtype=None)


def test_files_take_the_umask_mode(tmp_path):
    import os

    write_sharded([("w", torch.ones(2))], tmp_path, dtype=None)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / SINGLE_NAME).stat().st_mode & 0o777 == 0o666 & ~umask


def test_transformers_reads_the_shards_of_a_written_model(tmp_path):
    """The oracle for a whole model directory: transformers loads our shards into its own class."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    write_sharded(model.state_dict().items(), tmp_path, dtype="fp32", max_shard_size="20KB")
    config.save_pretrained(tmp_path)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path)
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert writers.INDEX_NAME in {p.name for p in tmp_path.iterdir()}
