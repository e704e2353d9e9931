"""The InternVL-chat LLM registry: every entry against the official transformers class, both directions."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vlft.config import spec_from_dict
from vlft.model.internvl_chat import (REGISTRY, LayoutError, chat_config_to_native, chat_training_fields,
                                      internvl_chat_to_native, llm_arch_of_chat_config, llm_entry,
                                      native_config_to_chat, native_to_internvl_chat, native_weight_names)
from vlft.model.load import build_vlm
from vlft.tiny.checkpoints import TINY_CHAT_LLMS, make_tiny_internvl_chat, make_tiny_internvl_chat_twin


def _spec(path) -> object:
    return spec_from_dict({"model": {"path": str(path), "attn_implementation": "eager"},
                           "data": {"tiling": {"mode": "dynamic"}}}).model


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    """{llm option: (original-layout dir, its transformers-native twin dir)}, the same weights in both."""
    root = tmp_path_factory.mktemp("chat_llms")
    return {llm: (make_tiny_internvl_chat(root / f"chat_{llm}", llm=llm, seed=3),
                  make_tiny_internvl_chat_twin(root / f"hf_{llm}", llm=llm, seed=3))
            for llm in TINY_CHAT_LLMS}


def _inputs(model):
    torch.manual_seed(0)
    ids = torch.tensor([[3, 7, *[model.info.image_token_id] * (2 * model.info.tokens_per_tile), 40, 50, 60]])
    return ids, torch.randn(2, 3, model.info.tile_size, model.info.tile_size)


def test_the_registry_has_one_entry_per_llm_architecture():
    assert sorted(REGISTRY) == ["internlm2", "llama", "phi3", "qwen2", "qwen3"]
    assert {e.architecture for e in REGISTRY.values()} == {
        "InternLM2ForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM", "Phi3ForCausalLM"}
    assert llm_arch_of_chat_config({"llm_config": {"architectures": ["Qwen3ForCausalLM"]}}) == "qwen3"
    assert (llm_entry("phi3").default_template, llm_entry("llama").default_template) == ("phi3-chat", "Hermes-2")
    with pytest.raises(LayoutError, match="'GptOssForCausalLM' is not supported"):
        llm_arch_of_chat_config({"llm_config": {"architectures": ["GptOssForCausalLM"]}})


@pytest.mark.parametrize("llm", list(TINY_CHAT_LLMS))
def test_vlft_model_of_an_original_layout_checkpoint_gives_the_official_class_logits(tiny_chat, llm):
    """The oracle is transformers' InternVLForConditionalGeneration on the twin (the same weights, saved by
    transformers itself), not anything converted by vlft."""
    from transformers import InternVLForConditionalGeneration

    chat_dir, hf_dir = tiny_chat[llm]
    config = json.loads((chat_dir / "config.json").read_text())
    assert config["llm_config"]["architectures"] == [llm_entry(TINY_CHAT_LLMS[llm][0]).architecture]
    model, _ = build_vlm(_spec(chat_dir))
    official = InternVLForConditionalGeneration.from_pretrained(hf_dir, attn_implementation="eager").eval()
    ids, pixels = _inputs(model)
    with torch.no_grad():
        ours = model.eval()(input_ids=ids, pixel_values=pixels).logits
        theirs = official(input_ids=ids, pixel_values=pixels).logits
    assert (ours - theirs).abs().max() <= 1e-5


@pytest.mark.parametrize("llm", list(TINY_CHAT_LLMS))
def test_chat_to_hf_to_chat_round_trip_is_exact(tiny_chat, llm):
    chat_dir, hf_dir = tiny_chat[llm]
    chat_state = load_file(chat_dir / "model.safetensors")
    chat_config = json.loads((chat_dir / "config.json").read_text())
    native_state, hf_config = internvl_chat_to_native(chat_state, chat_config, image_token_id=7)
    twin = load_file(hf_dir / "model.safetensors")
    assert native_state.keys() == twin.keys() and all(torch.equal(native_state[k], twin[k]) for k in twin)

    arch = llm_arch_of_chat_config(chat_config)
    back_state, back_config = native_to_internvl_chat(native_state, hf_config, llm_arch=arch,
                                                      training_fields=chat_training_fields(chat_config),
                                                      base_config=chat_config)
    assert back_state.keys() == chat_state.keys()
    assert all(torch.equal(back_state[k], chat_state[k]) for k in chat_state)
    assert back_config == chat_config


def test_qwen3_parameters_come_from_the_transformers_class():
    """InternVL3.5's Qwen3 has per-head q/k norms that no Qwen2 list would hold; the meta model has them."""
    native = chat_config_to_native(_qwen3_chat_config(), image_token_id=1)
    names = native_weight_names(native)
    assert "language_model.model.layers.1.self_attn.q_norm.weight" in names
    assert "language_model.model.layers.1.self_attn.q_proj.bias" not in names  # Qwen3: attention_bias=False
    assert names[-1] == "language_model.lm_head.weight"


def _qwen3_chat_config() -> dict:
    return {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "template": "internvl2_5",
        "ps_version": "v2", "downsample_ratio": 0.5, "select_layer": -1, "force_image_size": 56,
        "vision_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "intermediate_size": 128, "image_size": 56, "patch_size": 14, "qkv_bias": True,
                          "qk_normalization": False, "norm_type": "layer_norm"},
        "llm_config": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
                       "intermediate_size": 128, "vocab_size": 96, "rope_theta": 1000000.0,
                       "tie_word_embeddings": False},
    }


def test_phi3_keeps_its_fused_tensors_as_transformers_does(tiny_chat):
    chat_dir, _ = tiny_chat["phi3"]
    keys = load_file(chat_dir / "model.safetensors").keys()
    assert "language_model.model.layers.0.self_attn.qkv_proj.weight" in keys
    assert "language_model.model.layers.0.mlp.gate_up_proj.weight" in keys
    assert not [k for k in keys if k.endswith(("q_proj.weight", "gate_proj.weight"))]


def test_phi3_longrope_is_written_the_way_phi3_remote_code_reads_it():
    """InternVL2-4B's modeling_phi3.py knows longrope as rope_scaling {"type": "su"}; transformers calls it
    "longrope" in rope_parameters."""
    factors = [1.0] * 8  # head_dim 16 -> 8 factors
    llm_config = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 64,
                  "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 4,
                  "intermediate_size": 128, "vocab_size": 96, "max_position_embeddings": 8192,
                  "original_max_position_embeddings": 4096, "pad_token_id": 0, "bos_token_id": 1,
                  "eos_token_id": 2, "rope_theta": 10000.0,
                  "rope_scaling": {"type": "su", "short_factor": factors, "long_factor": factors}}
    chat = dict(_qwen3_chat_config(), llm_config=llm_config, template="phi3-chat")
    native = chat_config_to_native(chat, image_token_id=1)
    assert native["text_config"]["rope_parameters"]["rope_type"] == "longrope"
    back = native_config_to_chat(native, llm_arch="phi3", training_fields=chat_training_fields(chat))
    assert back["llm_config"]["rope_scaling"] == {"type": "su", "short_factor": factors, "long_factor": factors}
    assert back["llm_config"]["original_max_position_embeddings"] == 4096


def test_a_tied_original_layout_checkpoint_loads_and_exports_an_untied_head_said_so_at_both_levels(tmp_path):
    chat_dir = make_tiny_internvl_chat(tmp_path / "tied", llm="qwen2", tie_word_embeddings=True)
    chat_state = load_file(chat_dir / "model.safetensors")
    chat_config = json.loads((chat_dir / "config.json").read_text())
    assert "language_model.lm_head.weight" not in chat_state
    model, _ = build_vlm(_spec(chat_dir))
    assert torch.equal(model.language_model.lm_head.weight, model.language_model.get_input_embeddings().weight)

    native_state, hf_config = internvl_chat_to_native(chat_state, chat_config, image_token_id=7)
    base = dict(chat_config, tie_word_embeddings=True)  # InternVLChatConfig's PretrainedConfig default
    back_state, back_config = native_to_internvl_chat(native_state, hf_config, llm_arch="qwen2",
                                                      training_fields=chat_training_fields(chat_config),
                                                      base_config=base)
    assert "language_model.lm_head.weight" in back_state  # the head is stored ...
    assert back_config["tie_word_embeddings"] is False  # ... and both levels say so
    assert back_config["llm_config"]["tie_word_embeddings"] is False
