"""The composed VLM against transformers' official classes, for every input layout; LoRA/QLoRA; the report."""
import json

import pytest
import torch

from vlft.config import spec_from_dict
from vlft.errors import CheckpointError, ConfigError
from vlft.model.adapters import apply_training_policy
from vlft.model.load import build_vlm
from vlft.model.report import parameter_count, trainable_report


def _spec(**model):
    model.setdefault("attn_implementation", "eager")
    family = model.get("family", "internvl")
    data = {"tiling": {"mode": "dynamic" if family == "internvl" else "pad_square"}}
    if family == "llava":
        model.setdefault("connector", {"downsample_ratio": 1.0})
    return spec_from_dict({"model": model, "data": data})


def _inputs(model, tiles=2, text=(40, 50, 60, 70)):
    torch.manual_seed(0)
    n_img = tiles * model.info.tokens_per_tile
    ids = torch.tensor([[3, 7, *[model.info.image_token_id] * n_img, *text]])
    return ids, torch.randn(tiles, 3, model.info.tile_size, model.info.tile_size)


def _official_from(model, tmp_path):
    """The official class built from the composed model's own weights (written in the -hf layout)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForImageTextToText, InternVLConfig, LlavaConfig

    info = model.info
    text = model.language_model.config.to_dict()
    vision = model.vision_tower.config.to_dict()
    if info.family == "internvl":
        config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=info.image_token_id,
                                downsample_ratio=info.downsample_ratio, vision_feature_layer=info.select_layer,
                                tie_word_embeddings=False)
    else:
        config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=info.image_token_id,
                             vision_feature_layer=info.select_layer, tie_word_embeddings=False)
    config.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    return AutoModelForImageTextToText.from_pretrained(tmp_path, attn_implementation="eager").eval()


def _max_diff(a, b, ids, pixels):
    with torch.no_grad():
        return (a(input_ids=ids, pixel_values=pixels).logits - b(input_ids=ids, pixel_values=pixels).logits).abs().max()


@pytest.mark.parametrize("name", ["internvl_hf", "internvl_hf_llama", "llava_hf"])
def test_official_layouts_match_official_class(tiny_dir, name):
    from transformers import AutoModelForImageTextToText

    family = "llava" if name.startswith("llava") else "internvl"
    model, _ = build_vlm(_spec(family=family, path=str(tiny_dir[name])).model)
    official = AutoModelForImageTextToText.from_pretrained(tiny_dir[name], attn_implementation="eager").eval()
    ids, pixels = _inputs(model, tiles=2 if family == "internvl" else 1)
    assert _max_diff(model.eval(), official, ids, pixels) <= 1e-5


@pytest.mark.parametrize("family", ["internvl", "llava"])
def test_composed_from_parts_matches_official_class(tiny_dir, tmp_path, family):
    spec = _spec(family=family, vision={"path": str(tiny_dir[f"{family}_vision"])},
                 llm={"path": str(tiny_dir[f"{family}_llm"])})
    model, tokenizer = build_vlm(spec.model)
    assert tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>" if family == "internvl" else "<image>") == \
        model.info.image_token_id
    assert model.language_model.get_input_embeddings().num_embeddings == len(tokenizer)
    ids, pixels = _inputs(model, tiles=1)
    assert _max_diff(model.eval(), _official_from(model, tmp_path), ids, pixels) <= 1e-5


@pytest.mark.parametrize("llm, twin", [("internlm2", "internvl_hf_llama"), ("qwen2", "internvl_hf")])
def test_original_internvl_chat_loads_into_the_same_modules(tiny_dir, tmp_path, llm, twin):
    chat_dir = tiny_dir[f"internvl_chat_{llm}"]
    config = json.loads((chat_dir / "config.json").read_text())
    assert config["architectures"] == ["InternVLChatModel"]
    model, _ = build_vlm(_spec(path=str(chat_dir)).model)
    twin_model, _ = build_vlm(_spec(path=str(tiny_dir[twin])).model)
    ours, theirs = model.state_dict(), twin_model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    ids, pixels = _inputs(model)
    assert _max_diff(model.eval(), _official_from(model, tmp_path), ids, pixels) <= 1e-5


def test_lora_lands_only_on_llm_linears(tiny_dir):
    spec = _spec(path=str(tiny_dir["internvl_hf"]))
    model, _ = build_vlm(spec.model)
    apply_training_policy(model, spec.model)
    lora_names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora_names and all(n.startswith("language_model.") for n in lora_names)
    wrapped = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora_names}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"multi_modal_projector", "language_model"}


def test_vision_lora_when_asked(tiny_dir):
    spec = _spec(path=str(tiny_dir["internvl_hf"]), vision={"train": "lora"}, llm={"train": "frozen"})
    model, _ = build_vlm(spec.model)
    apply_training_policy(model, spec.model)
    lora_names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora_names and all(n.startswith("vision_tower.") for n in lora_names)
    rows = {r.part: r.mode for r in trainable_report(model)}
    assert rows == {"vision_tower": "lora", "multi_modal_projector": "full", "language_model": "frozen"}


def test_lora_target_that_matches_nothing(tiny_dir):
    spec = _spec(path=str(tiny_dir["internvl_hf"]), llm={"lora": {"target_modules": ["q_proj", "wqkv"]}})
    model, _ = build_vlm(spec.model)
    with pytest.raises(ConfigError, match=r"model.llm.lora.target_modules: \['wqkv'\] match no linear layer.*q_proj"):
        apply_training_policy(model, spec.model)


def test_report_counts_equal_a_direct_count(tiny_dir):
    spec = _spec(path=str(tiny_dir["internvl_hf"]), vision={"train": "lora"})
    model, _ = build_vlm(spec.model)
    apply_training_policy(model, spec.model)
    rows = trainable_report(model)
    assert sum(r.trainable for r in rows) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(r.total for r in rows) == sum(p.numel() for p in model.parameters())
    by_part = {r.part: r for r in rows}
    assert by_part["multi_modal_projector"].trainable == sum(
        p.numel() for p in model.multi_modal_projector.parameters())


def test_qlora_trains_a_step_on_cpu(tiny_dir):
    spec = _spec(path=str(tiny_dir["internvl_hf"]), llm={"quantization": {"bits": 4}})
    model, _ = build_vlm(spec.model)
    apply_training_policy(model, spec.model)
    quantized = [n for n, m in model.named_modules() if type(m).__name__ == "Linear4bit"]
    assert quantized and all(n.startswith("language_model.") for n in quantized)
    assert not any("lm_head" in n for n in quantized)
    rows = trainable_report(model)
    assert sum(r.total for r in rows) == sum(parameter_count(p) for p in model.parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    ids, pixels = _inputs(model)
    labels = ids.clone()
    labels[:, :-3] = -100
    loss = model.train()(input_ids=ids, pixel_values=pixels, labels=labels, use_cache=False).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = sum(not torch.equal(b, p) for b, p in zip(before, params))
    assert changed == len(params)


def test_bad_model_directories(tmp_path, tiny_dir):
    with pytest.raises(CheckpointError, match="no such directory"):
        build_vlm(_spec(path=str(tmp_path / "missing")).model)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="unknown model layout.*model_type='bert'"):
        build_vlm(_spec(path=str(tmp_path / "odd")).model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        build_vlm(_spec(path=str(tmp_path / "empty")).model)
    with pytest.raises(CheckpointError, match="model.llm.path=.*expected a language model directory"):
        build_vlm(_spec(vision={"path": str(tiny_dir["internvl_vision"])},
                        llm={"path": str(tiny_dir["internvl_vision"])}).model)


def test_remote_code_tokenizer_needs_an_explicit_opt_in(tmp_path, monkeypatch):
    from vlft.model.load import load_tokenizer

    monkeypatch.delenv("VLFT_TRUST_REMOTE_CODE", raising=False)
    (tmp_path / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "InternLM2Tokenizer", "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", null]}}')
    with pytest.raises(CheckpointError, match="exists only as remote code.*VLFT_TRUST_REMOTE_CODE=1"):
        load_tokenizer(tmp_path)
