"""ps_version 'v1' (InternVL-Chat-V1-5): vlft's pixel shuffle against a reference written from InternVL's code."""
from __future__ import annotations

import json

import pytest
import torch

from vlft.model.connector import Connector, pixel_shuffle
from vlft.model.internvl_chat import (LayoutError, chat_config_to_native, chat_training_fields,
                                      internvl_chat_to_native, native_to_internvl_chat)
from vlft.tiny.checkpoints import make_tiny_internvl_chat


def internvl_pixel_shuffle(x: torch.Tensor, scale_factor: float, ps_version: str) -> torch.Tensor:
    """InternVLChatModel.pixel_shuffle as modeling_internvl_chat.py writes it (view/permute sequence)."""
    n, w, h, c = x.size()
    x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))  # N, W, H*s, C/s
    x = x.permute(0, 2, 1, 3).contiguous()  # N, H*s, W, C/s
    x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
    if ps_version != "v1":  # v1 only warns and returns here
        x = x.permute(0, 2, 1, 3).contiguous()
    return x


def internvl_extract_feature(mlp1: torch.nn.Sequential, vit_embeds: torch.Tensor, downsample_ratio: float,
                             ps_version: str) -> torch.Tensor:
    """InternVLChatModel.extract_feature after the vision model: drop CLS, square grid, shuffle, mlp1."""
    vit_embeds = vit_embeds[:, 1:, :]
    h = w = int(vit_embeds.shape[1] ** 0.5)
    vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], h, w, -1)
    vit_embeds = internvl_pixel_shuffle(vit_embeds, downsample_ratio, ps_version)
    vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])
    return mlp1(vit_embeds)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_pixel_shuffle_matches_internvl_for_both_versions(version):
    x = torch.randn(3, 8, 8, 6)
    torch.testing.assert_close(pixel_shuffle(x, 0.5, version), internvl_pixel_shuffle(x, 0.5, version),
                               rtol=0, atol=0)


def test_v1_and_v2_hold_the_same_tokens_in_transposed_order():
    x = torch.randn(2, 4, 4, 8)
    v1, v2 = pixel_shuffle(x, 0.5, "v1"), pixel_shuffle(x, 0.5, "v2")
    assert not torch.equal(v1, v2)
    assert torch.equal(v1, v2.transpose(1, 2))


def test_connector_with_v1_equals_internvl_extract_feature():
    torch.manual_seed(0)
    connector = Connector(vision_hidden=8, text_hidden=16, downsample_ratio=0.5, ps_version="v1").eval()
    mlp1 = torch.nn.Sequential(connector.layer_norm, connector.linear_1, torch.nn.GELU(), connector.linear_2)
    with torch.no_grad():
        for param in connector.parameters():
            param.normal_()
    vit_embeds = torch.randn(2, 1 + 16, 8)  # CLS + a 4x4 grid
    with torch.no_grad():
        expected = internvl_extract_feature(mlp1, vit_embeds, 0.5, "v1")
        assert torch.equal(connector(vit_embeds[:, 1:]), expected)
        assert not torch.allclose(Connector(8, 16, 0.5)(vit_embeds[:, 1:]), expected)  # the v2 default differs


def test_an_unknown_ps_version_is_refused():
    with pytest.raises(ValueError, match="ps_version='v3'"):
        Connector(8, 16, 0.5, ps_version="v3")


def test_a_v1_checkpoint_has_no_transformers_native_equivalent_and_says_why(tmp_path):
    chat_dir = make_tiny_internvl_chat(tmp_path / "v15", llm="internlm2", ps_version="v1")
    chat_config = json.loads((chat_dir / "config.json").read_text())
    assert chat_config["ps_version"] == "v1"
    with pytest.raises(LayoutError, match=r"ps_version='v1': transformers' InternVL implements only the 'v2'") as error:
        chat_config_to_native(chat_config, image_token_id=7)
    assert "\n" not in str(error.value)


def test_a_v1_checkpoint_maps_for_vlft_and_back_to_the_original_layout_unchanged(tmp_path):
    from safetensors.torch import load_file

    chat_dir = make_tiny_internvl_chat(tmp_path / "v15", llm="internlm2", ps_version="v1")
    chat_config = json.loads((chat_dir / "config.json").read_text())
    chat_state = load_file(chat_dir / "model.safetensors")
    native_state, native = internvl_chat_to_native(chat_state, chat_config, image_token_id=7, allow_ps_v1=True)
    assert native["ps_version"] == "v1"  # what vlft's connector reads
    fields = chat_training_fields(chat_config)
    back_state, back = native_to_internvl_chat(native_state, native, llm_arch="internlm2", training_fields=fields,
                                               base_config=chat_config)
    assert back == chat_config
    assert all(torch.equal(back_state[k], chat_state[k]) for k in chat_state)
    with pytest.raises(LayoutError, match="ps_version='v2': the model uses the 'v1' pixel shuffle"):
        native_to_internvl_chat(native_state, native, llm_arch="internlm2",
                                training_fields=dict(fields, ps_version="v2"))
