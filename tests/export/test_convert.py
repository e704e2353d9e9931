"""vlft convert: transformers-native and InternVL-chat exports, checked against the official class and
read back; sharding; verification catches a wrong export; bad input is one line and leaves nothing."""
import errno
import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from vlft.cli import main
from vlft.errors import CheckpointError, ConfigError
from vlft.export import ExportError, VerifyError, convert_checkpoint, exported_spec, load_for_export, parse_size
from vlft.export import writers
from vlft.export.verify import training_prompt, verify_hf_export
from vlft.model.layouts import Layout, detect_layout, read_safetensors_dir

NEW_TOKENS = 16


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


class _Log(list):
    def __call__(self, line):
        self.append(line)


def _official_vs_vlft(out, merged):
    """Max |Δlogit| and both greedy continuations: transformers' class on OUT vs vlft's merged model (fp32)."""
    from transformers import AutoModelForImageTextToText

    official, loading = AutoModelForImageTextToText.from_pretrained(
        str(out), attn_implementation="eager", dtype=torch.float32, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"], loading
    prompt = training_prompt(merged.spec, merged.tokenizer, merged.model.info)
    ids, pixels = torch.tensor([prompt.input_ids]), prompt.pixel_values
    kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                  eos_token_id=merged.tokenizer.eos_token_id, pad_token_id=merged.tokenizer.pad_token_id)
    with torch.no_grad():
        ours = merged.model.float()(input_ids=ids, pixel_values=pixels).logits
        theirs = official.eval()(input_ids=ids, pixel_values=pixels).logits
        our_tokens = merged.model.generate(ids, pixels, **kwargs)[0].tolist()
        their_tokens = official.generate(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids),
                                         **kwargs)[0, ids.shape[1]:].tolist()
    return float((ours - theirs).abs().max()), our_tokens, their_tokens, official


# ------------------------------------------------------------------------------------------------
# transformers-native

_EXPORTS = {}


def _hf_fp32(name, via_merge, train_ckpt, merged_fp32, tmp_path_factory):
    """`vlft convert --to hf --dtype fp32` (verified), once per source."""
    if (name, via_merge) not in _EXPORTS:
        source = merged_fp32(name) if via_merge else train_ckpt(name)
        log = _Log()
        out = convert_checkpoint(source, tmp_path_factory.mktemp("hf") / name, target="hf", dtype="fp32", log=log)
        assert any(line.startswith("verify (hf):") and "max |Δlogit|" in line for line in log), log
        _EXPORTS[name, via_merge] = out
    return _EXPORTS[name, via_merge]


@pytest.mark.parametrize("name, via_merge", [("internvl_lora", False), ("internvl_qlora", True),
                                             ("chat_internlm2_lora", True), ("llava_lora", False)])
def test_hf_export_loads_in_transformers_with_the_same_logits_and_greedy_tokens(name, via_merge, train_ckpt,
                                                                                merged_fp32, tmp_path_factory):
    ckpt = train_ckpt(name)
    out = _hf_fp32(name, via_merge, train_ckpt, merged_fp32, tmp_path_factory)

    merged = load_for_export(ckpt)  # vlft's own merged model, in memory
    diff, ours, theirs, official = _official_vs_vlft(out, merged)
    assert diff <= 1e-4
    assert ours == theirs and len(ours) == NEW_TOKENS
    family = merged.model.info.family
    assert type(official).__name__ == ("InternVLForConditionalGeneration" if family == "internvl"
                                       else "LlavaForConditionalGeneration")


def test_hf_export_files_carry_the_training_template_tiling_and_tokens(train_ckpt, tmp_path):
    from transformers import AutoImageProcessor, AutoTokenizer, GenerationConfig

    from vlft.data.templates import get_template

    out = convert_checkpoint(train_ckpt("internvl_lora"), tmp_path / "hf", target="hf", log=_Log())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (tokenizer.start_image_token, tokenizer.end_image_token, tokenizer.context_image_token,
            tokenizer.video_token) == ("<img>", "</img>", "<IMG_CONTEXT>", "<video>")
    text = tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                        {"type": "text", "text": "Dish?"}]}],
                                         add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nYou are a food expert.<|im_end|>\n<|im_start|>user\n<IMG_CONTEXT>\nDish?"
                    "<|im_end|>\n<|im_start|>assistant\n")
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    assert eos == [tokenizer.convert_tokens_to_ids(w) for w in get_template("internvl2_5").stop_words]
    image_processor = AutoImageProcessor.from_pretrained(out)
    assert type(image_processor).__name__.startswith("GotOcr2ImageProcessor")
    assert (image_processor.crop_to_patches, image_processor.min_patches, image_processor.max_patches) == (True, 1, 4)
    assert image_processor.size.height == 56 and list(image_processor.image_mean) == [0.485, 0.456, 0.406]
    assert json.loads((out / "processor_config.json").read_text()) == {"processor_class": "InternVLProcessor",
                                                                      "image_seq_length": 4}
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["dtype"] == "bfloat16"
    assert {v.dtype for v in read_safetensors_dir(out).values()} == {torch.bfloat16}


def test_llava_bf16_export_has_the_canonical_vision_layout_llava_processor_files_and_verifies_in_fp32(
        train_ckpt, tmp_path):
    out = convert_checkpoint(train_ckpt("llava_lora"), tmp_path / "hf", target="hf", dtype="bf16", verify=False,
                             log=_Log())
    names = read_safetensors_dir(out)
    assert all(k.startswith(("vision_tower.vision_model.", "multi_modal_projector.linear_", "language_model."))
               for k in names)
    processor = json.loads((out / "processor_config.json").read_text())
    assert processor == {"processor_class": "LlavaProcessor", "patch_size": 14,
                         "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1,
                         "image_token": "<image>"}
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    assert preprocessor["do_pad"] is True and preprocessor["size"] == {"height": 56, "width": 56}
    report = verify_hf_export(out)  # both models loaded in fp32 from the same bf16 weights
    assert report.max_abs_logit_diff <= 1e-4 and len(report.greedy_tokens) == NEW_TOKENS


@pytest.mark.parametrize("tamper, message", [
    (lambda out: _edit_json(out / "processor_config.json", image_seq_length=5), "chat template"),
    (lambda out: _edit_json(out / "preprocessor_config.json", image_mean=[0.5, 0.5, 0.5]), "pixels differ"),
    (lambda out: (out / "chat_template.jinja").write_text(__import__("vlft.data.templates", fromlist=["x"])
                                                           .get_template("chatml").jinja), "chat template"),
], ids=["image_seq_length", "image_mean", "chat_template"])
def test_verification_catches_an_export_that_prompts_differently(tamper, message, train_ckpt, merged_fp32,
                                                                 tmp_path_factory, tmp_path):
    out = tmp_path / "hf"
    shutil.copytree(_hf_fp32("internvl_lora", False, train_ckpt, merged_fp32, tmp_path_factory), out)
    tamper(out)
    with pytest.raises(VerifyError, match=message) as failure:
        verify_hf_export(out)
    assert len(str(failure.value).splitlines()) == 1


def _edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_failed_verification_leaves_no_out(train_ckpt, tmp_path, monkeypatch):
    import vlft.export.target_hf as target_hf

    def mismatch(out, **kwargs):
        raise VerifyError(f"{out}: max |Δlogit| = 1.0e+00 > 1e-04")

    monkeypatch.setattr(target_hf, "verify_hf_export", mismatch)
    with pytest.raises(VerifyError):
        convert_checkpoint(train_ckpt("internvl_lora"), tmp_path / "hf", target="hf", log=_Log())
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# Sharding


def test_small_max_shard_size_gives_several_shards_and_a_complete_index(train_ckpt, tmp_path):
    limit = parse_size("40KB")
    out = convert_checkpoint(train_ckpt("internvl_lora"), tmp_path / "hf", target="hf", dtype="fp32",
                             max_shard_size="40KB", verify=False, log=_Log())
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 3 and not (out / "model.safetensors").exists()
    assert sorted(set(index["weight_map"].values())) == [p.name for p in shards]
    in_files, total = {}, 0
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            sizes = {k: handle.get_tensor(k).numel() * 4 for k in handle.keys()}
        assert sum(sizes.values()) <= limit or len(sizes) == 1  # only a lone oversized tensor may exceed
        in_files.update(dict.fromkeys(sizes, shard.name))
        total += sum(sizes.values())
    assert in_files == index["weight_map"] and index["metadata"]["total_size"] == total
    merged = load_for_export(train_ckpt("internvl_lora")).model
    assert set(in_files) == set(merged.state_dict())
    _, loading = AutoModelForImageTextToText.from_pretrained(str(out), output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]


@pytest.mark.parametrize("text, value", [("2GB", 2 * 10**9), ("500MB", 5 * 10**8), ("1.5GiB", 3 * 2**29),
                                         ("64kb", 64000), (123, 123)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "2XB", "-1GB", "GB", "0"])
def test_parse_size_rejects_nonsense(text):
    with pytest.raises(ConfigError, match="--max-shard-size"):
        parse_size(text)


# ------------------------------------------------------------------------------------------------
# InternVL-chat


@pytest.mark.parametrize("name", ["chat_internlm2_lora", "chat_qwen2_lora"])
def test_internvl_chat_export_reads_back_identical_with_the_runs_fields(name, train_ckpt, tiny_base, tmp_path):
    from vlft.model.load import build_vlm

    ckpt = train_ckpt(name)
    log = _Log()
    out = convert_checkpoint(ckpt, tmp_path / "chat", target="internvl-chat", dtype="fp32", max_shard_size="60KB",
                             log=log)
    assert any(line.startswith("verify (internvl-chat):") for line in log), log
    assert detect_layout(out) is Layout.INTERNVL_CHAT
    config = json.loads((out / "config.json").read_text())
    base_name = "chat_internlm2" if "internlm2" in name else "chat_qwen2"
    base_config = json.loads((tiny_base(base_name) / "config.json").read_text())
    spec = load_for_export(ckpt).spec
    assert config["template"] == spec.data.template
    assert (config["force_image_size"], config["max_dynamic_patch"], config["min_dynamic_patch"]) == \
           (56, spec.data.tiling.max_tiles, 1)
    assert config["max_dynamic_patch"] != base_config["max_dynamic_patch"]  # the run's value, not the base's
    assert (config["ps_version"], config["downsample_ratio"], config["select_layer"]) == ("v2", 0.5, -1)
    assert config["use_thumbnail"] is True and config["dynamic_image_size"] is True
    assert config["use_llm_lora"] == 0
    assert config["llm_config"]["architectures"] == base_config["llm_config"]["architectures"]
    assert sorted(p.name for p in out.glob("*.py")) == sorted(p.name for p in tiny_base(base_name).glob("*.py"))
    assert len(list(out.glob("model-*.safetensors"))) > 1

    merged = load_for_export(ckpt).model.state_dict()
    back, _ = build_vlm(exported_spec(out).model, quantize=False)
    back_state = back.state_dict()
    assert set(back_state) == set(merged)
    for key, tensor in merged.items():
        assert torch.equal(back_state[key], tensor), key


def test_internvl_chat_export_from_a_merged_dir_uses_the_kept_remote_code(merged_fp32, tmp_path):
    out = convert_checkpoint(merged_fp32("chat_internlm2_lora"), tmp_path / "chat", target="internvl-chat",
                             dtype="bf16", log=_Log())
    assert (out / "modeling_internlm2.py").is_file()
    assert json.loads((out / "config.json").read_text())["llm_config"]["architectures"] == ["InternLM2ForCausalLM"]
    assert {v.dtype for v in read_safetensors_dir(out).values()} == {torch.bfloat16}


# ------------------------------------------------------------------------------------------------
# Bad input: one line, nothing left behind


def test_cli_convert_llava_to_internvl_chat_is_one_line(train_ckpt, tmp_path):
    ckpt = train_ckpt("llava_lora")
    result = CliRunner().invoke(main, ["convert", str(ckpt), str(tmp_path / "out"), "--to", "internvl-chat"])
    assert result.exit_code == 2
    assert _lines(result.output) == [f"error: --to internvl-chat: {ckpt} holds a LLaVA model, and the InternVL-chat "
                                     "layout is for InternVL models only; use --to hf or --to lora"]
    assert not (tmp_path / "out").exists()


def test_cli_convert_of_a_model_vlft_did_not_write_is_one_line(tiny_base, tmp_path):
    base = tiny_base("internvl_hf")
    result = CliRunner().invoke(main, ["convert", str(base), str(tmp_path / "out"), "--to", "hf"])
    assert result.exit_code == 2 and len(_lines(result.output)) == 1
    assert "vlft did not write (no vlft_checkpoint.json or vlft_model.json)" in result.output
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "missing"), str(tmp_path / "out"), "--to", "hf"])
    assert _lines(result.output) == [f"error: {tmp_path / 'missing'}: no such directory"]


def test_cli_convert_refuses_a_non_empty_out(train_ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"old")
    result = CliRunner().invoke(main, ["convert", str(train_ckpt("internvl_lora")), str(out), "--to", "hf"])
    assert result.exit_code == 2 and "exists and is not empty; pass --overwrite" in result.output
    assert (out / "model.safetensors").read_bytes() == b"old"


def test_internvl_chat_needs_a_template_internvl_knows(train_ckpt, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(train_ckpt("chat_qwen2_lora"), ckpt)
    meta = json.loads((ckpt / "vlft_checkpoint.json").read_text())
    meta["config"]["data"]["template"] = "chatml"
    (ckpt / "vlft_checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="template 'chatml' is not one InternVL's remote code knows"):
        convert_checkpoint(ckpt, tmp_path / "out", target="internvl-chat", log=_Log())


def test_convert_disk_full_leaves_no_out(train_ckpt, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writers, "_write_shard", disk_full)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", str(train_ckpt("internvl_lora")), str(out), "--to", "hf"])
    assert result.exit_code == 2
    assert _lines(result.output) == [f"error: {out}: writing failed (No space left on device); nothing was written "
                                     f"to {out} - free some space and retry"]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ExportError):
        convert_checkpoint(train_ckpt("chat_qwen2_lora"), out, target="internvl-chat", log=_Log())
    assert list(tmp_path.iterdir()) == []
