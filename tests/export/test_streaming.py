"""The streamed merge writes what the in-memory merge (the oracle) writes: same tensors, same files."""
import json
import shutil

import pytest
import torch

from tests.export.conftest import CHECKPOINTS, build_train_checkpoint
from vlft.export import merge_checkpoint
from vlft.export.convert import convert_checkpoint
from vlft.export.merge import StreamedMerge, merge_training_checkpoint, streamed_merge
from vlft.export.streaming import NotStreamable
from vlft.export.target_hf import write_hf
from vlft.export.target_internvl_chat import write_internvl_chat
from vlft.model.layouts import read_safetensors_dir

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def _assert_same_export(streamed_dir, oracle_dir):
    streamed, oracle = read_safetensors_dir(streamed_dir), read_safetensors_dir(oracle_dir)
    assert set(streamed) == set(oracle)
    for name, tensor in oracle.items():
        assert streamed[name].dtype == tensor.dtype, name
        assert torch.equal(streamed[name], tensor), name
    files = sorted(p.relative_to(oracle_dir) for p in oracle_dir.rglob("*") if p.is_file()
                   and not p.name.startswith("model"))
    assert files == sorted(p.relative_to(streamed_dir) for p in streamed_dir.rglob("*") if p.is_file()
                           and not p.name.startswith("model"))
    for file in files:  # config, generation config, tokenizer, processor files, vlft_model.json, remote code
        assert (streamed_dir / file).read_bytes() == (oracle_dir / file).read_bytes(), file
    index = [json.loads((d / "model.safetensors.index.json").read_text()) for d in (streamed_dir, oracle_dir)]
    assert index[0]["metadata"] == index[1]["metadata"] and set(index[0]["weight_map"]) == set(index[1]["weight_map"])


def _streamed_and_oracle(ckpt, tmp_path, dtype):
    streamed = streamed_merge(ckpt)
    assert isinstance(streamed, StreamedMerge)
    write_hf(tmp_path / "streamed", streamed, dtype=dtype, max_shard_size="2GB")
    write_hf(tmp_path / "oracle", merge_training_checkpoint(ckpt), dtype=dtype, max_shard_size="2GB")
    return tmp_path / "streamed", tmp_path / "oracle"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_streamed_merge_equals_the_in_memory_merge(name, dtype, train_ckpt, tmp_path):
    (tmp_path / "streamed").mkdir(), (tmp_path / "oracle").mkdir()
    streamed, oracle = _streamed_and_oracle(train_ckpt(name), tmp_path, dtype)
    _assert_same_export(streamed, oracle)
    if name == "llava_lora":
        assert any(k.startswith("vision_tower.vision_model.") for k in read_safetensors_dir(streamed))


def test_streamed_merge_of_a_tied_base_writes_the_head_from_the_embeddings(tiny_base, tmp_path):
    """A base with tied embeddings stores no lm_head; the export's config unties it, so it must be written."""
    from safetensors.torch import load_file, save_file

    base = tmp_path / "tied_base"
    shutil.copytree(tiny_base("internvl_hf"), base)
    for file in base.glob("*.safetensors"):
        state = load_file(str(file))
        state.pop("language_model.lm_head.weight", None)
        state.pop("lm_head.weight", None)
        save_file(state, str(file), metadata={"format": "pt"})
    config = json.loads((base / "config.json").read_text())
    config["tie_word_embeddings"] = config["text_config"]["tie_word_embeddings"] = True
    (base / "config.json").write_text(json.dumps(config))
    ckpt = build_train_checkpoint(base, tmp_path / "ckpt", family="internvl", template="internvl2_5")
    (tmp_path / "streamed").mkdir(), (tmp_path / "oracle").mkdir()
    streamed, oracle = _streamed_and_oracle(ckpt, tmp_path, "fp32")
    _assert_same_export(streamed, oracle)
    state = read_safetensors_dir(streamed)
    assert torch.equal(state["language_model.lm_head.weight"], state["language_model.model.embed_tokens.weight"])


def test_merge_streams_and_a_parts_base_falls_back_to_memory(train_ckpt, tmp_path, monkeypatch):
    import vlft.export.merge as merge

    def no_model(_):
        raise AssertionError("the in-memory merge ran")

    monkeypatch.setattr(merge, "merge_training_checkpoint", no_model)
    merge_checkpoint(train_ckpt("internvl_lora"), tmp_path / "out", log=lambda _: None)
    assert (tmp_path / "out" / "config.json").is_file()

    meta = {"config": {"model": {"path": None}}}
    with pytest.raises(NotStreamable, match="parts"):
        from vlft.export.streaming import streamable_base
        streamable_base(meta)


@pytest.mark.parametrize("base, family, template", [("internvl_hf", "internvl", "internvl2_5"),
                                                    ("llava_hf", "llava", "vicuna_v1")])
def test_streamed_merge_equals_the_in_memory_merge_for_dora_and_vision_lora(base, family, template, tiny_base,
                                                                            tmp_path):
    dora = {"r": 4, "alpha": 8, "use_dora": True}
    model = {"llm": {"lora": dora}, "vision": {"train": "lora", "lora": dora}}
    if family == "llava":
        model["connector"] = {"downsample_ratio": 1.0}
    data = {"tiling": {"mode": "pad_square"}} if family == "llava" else None
    ckpt = build_train_checkpoint(tiny_base(base), tmp_path / "ckpt", family=family, template=template, model=model,
                                  data=data)
    assert "lora_magnitude_vector" in str(read_safetensors_dir(ckpt / "llm_adapter").keys())
    (tmp_path / "streamed").mkdir(), (tmp_path / "oracle").mkdir()
    streamed, oracle = _streamed_and_oracle(ckpt, tmp_path, "bf16")
    _assert_same_export(streamed, oracle)


def test_streamed_merge_into_small_shards_keeps_every_shard_under_the_cap(train_ckpt, tmp_path):
    from vlft.export import writers

    ckpt = train_ckpt("chat_internlm2_lora")
    out = merge_checkpoint(ckpt, tmp_path / "small", dtype="fp32", max_shard_size="20KB", log=lambda _: None)
    index = json.loads((out / writers.INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3
    state = read_safetensors_dir(out)
    for shard in shards:
        names = [n for n, s in index["weight_map"].items() if s == shard]
        assert len(names) == 1 or sum(writers.tensor_bytes(state[n]) for n in names) <= 20_000, shard
    (tmp_path / "oracle").mkdir()
    write_hf(tmp_path / "oracle", merge_training_checkpoint(ckpt), dtype="fp32", max_shard_size="2GB")
    oracle = read_safetensors_dir(tmp_path / "oracle")
    assert set(state) == set(oracle) and all(torch.equal(state[n], oracle[n]) for n in oracle)


@pytest.mark.parametrize("name", ["internvl_lora", "internvl_qlora", "chat_internlm2_lora", "chat_qwen2_lora"])
def test_streamed_internvl_chat_export_equals_the_in_memory_one(name, train_ckpt, tmp_path):
    ckpt = train_ckpt(name)
    (tmp_path / "streamed").mkdir(), (tmp_path / "oracle").mkdir()
    streamed = write_internvl_chat(tmp_path / "streamed", streamed_merge(ckpt), dtype="bf16", max_shard_size="2GB")
    oracle = write_internvl_chat(tmp_path / "oracle", merge_training_checkpoint(ckpt), dtype="bf16",
                                 max_shard_size="2GB")
    assert streamed.warnings == oracle.warnings
    _assert_same_export(tmp_path / "streamed", tmp_path / "oracle")
    assert any(key.startswith("mlp1.") for key in read_safetensors_dir(tmp_path / "streamed"))


def test_convert_to_internvl_chat_without_verify_streams(train_ckpt, tmp_path, monkeypatch):
    import vlft.export.merge as merge

    def no_model(_):
        raise AssertionError("the in-memory merge ran")

    monkeypatch.setattr(merge, "merge_training_checkpoint", no_model)
    out = convert_checkpoint(train_ckpt("chat_internlm2_lora"), tmp_path / "chat", target="internvl-chat",
                             verify=False, log=lambda _: None)
    assert json.loads((out / "config.json").read_text())["template"] == "internlm2-chat"
