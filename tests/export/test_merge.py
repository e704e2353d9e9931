"""vlft merge: LoRA/QLoRA folded into the full-precision base, written atomically in vlft's native layout."""
import errno
import json

import pytest
import torch
from click.testing import CliRunner

from vlft.cli import main
from vlft.errors import CheckpointError
from vlft.export import ExportError, merge_checkpoint, read_model_record
from vlft.export import writers
from vlft.model.layouts import Layout, detect_layout, read_safetensors_dir


def _quiet(_):
    """A `log` callback that prints nothing."""


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def _inputs(model, tiles=3, seed=0):
    """Ids with one image's slots and matching pixels (no tokenizer needed)."""
    g = torch.Generator().manual_seed(seed)
    n = tiles * model.info.tokens_per_tile
    ids = torch.cat([torch.randint(20, 200, (5,), generator=g), torch.full((n,), model.info.image_token_id),
                     torch.randint(20, 200, (7,), generator=g)])[None]
    pixels = torch.randn(tiles, 3, model.info.tile_size, model.info.tile_size, generator=g)
    return ids, pixels


def test_merge_writes_native_layout_that_reloads_and_matches_the_adapter_model(train_ckpt, merged_fp32):
    from vlft.export import exported_spec
    from vlft.model.load import build_vlm
    from vlft.model.trained_state import build_from_checkpoint

    ckpt, out = train_ckpt("internvl_lora"), merged_fp32("internvl_lora")
    assert detect_layout(out) is Layout.HF_INTERNVL
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["text_config"]["tie_word_embeddings"] is False
    assert config["architectures"] == ["InternVLForConditionalGeneration"]
    record = read_model_record(out)
    assert record["template"] == "internvl2_5" and record["system_prompt"] == "You are a food expert."
    assert record["tiling"]["max_tiles"] == 4 and record["tiling"]["tile_size"] == 56
    assert record["info"]["family"] == "internvl" and record["step"] == 1
    state = read_safetensors_dir(out)
    assert not [k for k in state if "lora" in k or "base_layer" in k]
    assert "language_model.lm_head.weight" in state and "vision_tower.encoder.layer.0.attention.q_proj.weight" in state

    # The merged directory loads through vlft's own loader (chat/eval path) ...
    merged, _ = build_vlm(exported_spec(out).model, quantize=False)
    # ... and computes what the unmerged adapter model (LLM + vision LoRA) computes.
    adapter_model, _, _ = build_from_checkpoint(ckpt, quantize=False)
    ids, pixels = _inputs(merged)
    with torch.no_grad():
        want = adapter_model.eval()(input_ids=ids, pixel_values=pixels).logits
        got = merged.eval()(input_ids=ids, pixel_values=pixels).logits
    assert (want - got).abs().max() < 1e-4
    base_state = read_safetensors_dir(read_model_record(out)["base_model"])
    moved = [k for k in base_state if not torch.equal(base_state[k], state[k])]
    assert any(k.startswith("vision_tower.") for k in moved) and any(k.startswith("language_model.") for k in moved)
    assert any(k.startswith("multi_modal_projector.") for k in moved)


def test_qlora_merge_equals_the_adapter_merged_into_the_full_precision_base(train_ckpt, merged_fp32, tiny_base):
    """The 4-bit run's adapter lands on the unquantized base, exactly as peft merges it into the fp32 LLM."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    ckpt, out = train_ckpt("internvl_qlora"), merged_fp32("internvl_qlora")
    base_dir = tiny_base("internvl_hf")
    base = read_safetensors_dir(base_dir)
    llm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir).text_config)
    llm.load_state_dict({k.removeprefix("language_model."): v for k, v in base.items()
                         if k.startswith("language_model.")})
    reference = PeftModel.from_pretrained(llm, ckpt / "llm_adapter").merge_and_unload().state_dict()
    trained = read_safetensors_dir(ckpt)  # trained.safetensors: the connector
    merged = read_safetensors_dir(out)
    assert set(merged) == set(base)
    for name, tensor in merged.items():
        if name.startswith("language_model."):
            want = reference[name.removeprefix("language_model.")]
        else:
            want = trained.get(name, base[name])
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, want, rtol=0, atol=1e-6, msg=name)
    changed = [n for n in merged if n.startswith("language_model.") and not torch.equal(merged[n], base[n])]
    assert any("q_proj" in n for n in changed) and any("down_proj" in n for n in changed)


def test_bf16_merge_is_the_fp32_merge_rounded(train_ckpt, merged_fp32, tmp_path):
    out = merge_checkpoint(train_ckpt("internvl_lora"), tmp_path / "bf16", dtype="bf16", log=_quiet)
    fp32, bf16 = read_safetensors_dir(merged_fp32("internvl_lora")), read_safetensors_dir(out)
    assert set(fp32) == set(bf16)
    for name in fp32:
        assert bf16[name].dtype == torch.bfloat16
        assert torch.equal(bf16[name], fp32[name].to(torch.bfloat16)), name
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_cli_merge_shards_as_asked_and_writes_the_same_tensors(train_ckpt, merged_fp32, tmp_path):
    out = tmp_path / "sharded"
    result = CliRunner().invoke(main, ["merge", str(train_ckpt("internvl_lora")), str(out), "--dtype", "fp32",
                                       "--max-shard-size", "20KB"])
    assert result.exit_code == 0, result.output
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    assert all(shard.stat().st_size < 20_000 + 4096 or len(_shard_names(shard)) == 1 for shard in shards)
    whole, sharded = read_safetensors_dir(merged_fp32("internvl_lora")), read_safetensors_dir(out)
    assert set(whole) == set(sharded) and all(torch.equal(whole[name], sharded[name]) for name in whole)


def _shard_names(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def test_merge_of_an_internvl_chat_base_keeps_its_remote_code(train_ckpt, merged_fp32, tiny_base):
    out = merged_fp32("chat_internlm2_lora")
    assert detect_layout(out) is Layout.HF_INTERNVL  # InternLM2 is Llama-layout in the native form
    record = read_model_record(out)
    assert record["base_layout"] == "internvl_chat" and record["llm_arch"] == "internlm2"
    assert (out / "remote_code" / "modeling_internlm2.py").is_file()
    assert json.loads((out / "remote_code" / "config.json").read_text())["model_type"] == "internvl_chat"


# ------------------------------------------------------------------------------------------------
# Bad input: one line, nothing left behind


def test_cli_merge_of_a_directory_that_is_not_a_checkpoint_is_one_line(tmp_path, tiny_base):
    runner = CliRunner()
    result = runner.invoke(main, ["merge", str(tiny_base("internvl_hf")), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert _lines(result.output) == [f"error: {tiny_base('internvl_hf')}: not a vlft checkpoint (no "
                                     "vlft_checkpoint.json); give a directory written by `vlft train`, e.g. "
                                     "work_dir/checkpoint-100"]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(main, ["merge", str(empty), str(tmp_path / "out")])
    assert result.exit_code == 2 and len(_lines(result.output)) == 1 and "not a vlft checkpoint" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_merge_refuses_a_non_empty_out_and_leaves_it_untouched(tmp_path, train_ckpt):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = CliRunner().invoke(main, ["merge", str(train_ckpt("internvl_lora")), str(out)])
    assert result.exit_code == 2
    assert _lines(result.output) == [f"error: {out}: exists and is not empty; pass --overwrite to replace it, "
                                     "or choose another OUT"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"


def test_overwrite_replaces_out_only_once_the_new_one_is_complete(tmp_path, train_ckpt, monkeypatch):
    ckpt, out = train_ckpt("internvl_lora"), tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writers, "_write_shard", disk_full)
    with pytest.raises(ExportError) as failure:
        merge_checkpoint(ckpt, out, overwrite=True, log=_quiet)
    assert len(str(failure.value).splitlines()) == 1 and "No space left on device" in str(failure.value)
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # the old content survives a failed overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # and no staging directory is left
    monkeypatch.undo()
    merge_checkpoint(ckpt, out, overwrite=True, log=_quiet)
    assert not (out / "old.txt").exists() and (out / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_disk_full_leaves_no_out(tmp_path, train_ckpt, monkeypatch):
    calls = []

    def full_on_second_shard(data_path, path, header):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(data_path, path, header)

    original = writers._write_shard
    monkeypatch.setattr(writers, "_write_shard", full_on_second_shard)
    out = tmp_path / "merged"
    with pytest.raises(ExportError, match="No space left on device"):
        merge_checkpoint(train_ckpt("internvl_lora"), out, max_shard_size="20KB", log=_quiet)
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []


def test_out_must_not_be_the_checkpoint(train_ckpt):
    ckpt = train_ckpt("internvl_lora")
    with pytest.raises(CheckpointError, match="would replace the input"):
        merge_checkpoint(ckpt, ckpt, overwrite=True, log=_quiet)
    with pytest.raises(CheckpointError, match="would replace the input"):
        merge_checkpoint(ckpt, ckpt.parent, overwrite=True, log=_quiet)
    assert (ckpt / "vlft_checkpoint.json").is_file()
