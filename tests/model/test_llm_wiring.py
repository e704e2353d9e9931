"""What loading and training policy take from the InternVL-chat registry: a 'v1' pixel shuffle read from the
original layout, and LoRA default targets that exist in every LLM of the registry (Phi-3's fused ones too)."""
from __future__ import annotations

import pytest
import torch

from vlft.config import spec_from_dict
from vlft.model.adapters import apply_training_policy
from vlft.model.facts import model_facts
from vlft.model.load import build_vlm
from vlft.tiny.checkpoints import make_tiny_internvl_chat, make_tiny_internvl_chat_twin


def _spec(path, **model):
    return spec_from_dict({"model": {"path": str(path), "attn_implementation": "eager", **model},
                           "data": {"tiling": {"mode": "dynamic"}}}).model


@pytest.mark.battery("model-dirs", was="traceback")
def test_a_ps_version_v1_base_loads_with_vlfts_v1_connector_and_check_data_says_the_same(tmp_path):
    """InternVL-Chat-V1-5: the same weights as the 'v2' twin, image tokens in transposed grid order."""
    chat = make_tiny_internvl_chat(tmp_path / "v15", llm="internlm2", ps_version="v1", seed=5)
    twin = make_tiny_internvl_chat_twin(tmp_path / "twin", llm="internlm2", seed=5)
    v1, _ = build_vlm(_spec(chat))
    v2, _ = build_vlm(_spec(twin))
    assert v1.info.ps_version == "v1" and v1.multi_modal_projector.ps_version == "v1"
    assert v2.info.ps_version == "v2"
    assert model_facts(_spec(chat))[0] == v1.info

    torch.manual_seed(0)
    pixels = torch.randn(2, 3, v1.info.tile_size, v1.info.tile_size)
    with torch.no_grad():
        ours, theirs = v1.eval().encode_images(pixels), v2.eval().encode_images(pixels)  # [tiles, tokens, D]
    side = int(v1.info.tokens_per_tile ** 0.5)
    transposed = theirs.reshape(2, side, side, -1).transpose(1, 2).reshape(theirs.shape)
    torch.testing.assert_close(ours, transposed, rtol=0, atol=1e-6)
    assert not torch.allclose(ours, theirs)


@pytest.mark.battery("configs", was="traceback")
@pytest.mark.parametrize("llm, wanted", [
    ("phi3", {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
    ("qwen3", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ("internlm2", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
])
def test_default_lora_targets_are_the_projections_each_llm_has(tmp_path, llm, wanted):
    model, _ = build_vlm(_spec(make_tiny_internvl_chat(tmp_path / llm, llm=llm)))
    apply_training_policy(model, _spec(tmp_path / llm))
    assert set(model.language_model.peft_config["default"].target_modules) == wanted
    assert any(name.endswith("lora_A.default.weight") for name, _ in model.language_model.named_parameters())
