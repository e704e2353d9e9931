"""InternVL-chat <-> transformers-native layout: round trips, wqkv grouping, and the official class as oracle."""
from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import InternVLConfig, InternVLForConditionalGeneration

from vlft.model.internvl_chat import (
    LayoutError,
    chat_config_to_native,
    chat_key_to_native,
    group_wqkv,
    internvl_chat_to_native,
    iter_chat_to_native,
    iter_native_to_chat,
    native_config_to_chat,
    native_key_to_chat,
    native_to_internvl_chat,
    native_weight_names,
    split_vision_qkv,
    ungroup_wqkv,
    write_tiny_internvl_chat_checkpoint,
)

IMAGE_TOKEN_ID = 7
TRAINING = {
    "template": "internvl2_5",
    "ps_version": "v2",
    "force_image_size": 28,
    "dynamic_image_size": True,
    "min_dynamic_patch": 1,
    "max_dynamic_patch": 12,
    "use_thumbnail": True,
}


def _vision(kind: str) -> dict:
    # InternViT-300M style (LayerNorm, qkv bias) for Qwen2; InternViT-6B style (RMSNorm, qk-norm) for Llama.
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  image_size=28, patch_size=14)
    if kind == "qwen2":
        return dict(common, attention_bias=True, norm_type="layer_norm", use_qk_norm=False)
    return dict(common, attention_bias=False, norm_type="rms_norm", use_qk_norm=True, layer_norm_eps=1e-5)


def _text(kind: str) -> dict:
    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=96, tie_word_embeddings=False)
    if kind == "qwen2":
        return dict(common, model_type="qwen2", rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    # InternLM2-like: biased wqkv/wo, dynamic NTK rope
    return dict(common, model_type="llama", attention_bias=True, rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6})


@pytest.fixture(scope="module")
def native_models(tmp_path_factory):
    """{kind: (native state as save_pretrained writes it, config.json dict, directory)} with random weights."""
    models = {}
    for kind in ("qwen2", "llama"):
        torch.manual_seed(0)
        config = InternVLConfig(vision_config=_vision(kind), text_config=_text(kind), image_token_id=IMAGE_TOKEN_ID,
                                image_seq_length=1, downsample_ratio=0.5, vision_feature_layer=-1,
                                tie_word_embeddings=False)
        model = InternVLForConditionalGeneration(config)
        with torch.no_grad():  # random everything, so ones/zeros inits cannot hide a wrong mapping
            for param in model.parameters():
                param.normal_(0, 0.3)
        directory = tmp_path_factory.mktemp(f"native_{kind}")
        model.save_pretrained(directory)
        models[kind] = (load_file(directory / "model.safetensors"), json.loads((directory / "config.json").read_text()),
                        directory)
    return models


def _native(native_models, llm_arch):
    return native_models["qwen2" if llm_arch == "qwen2" else "llama"]


@pytest.mark.parametrize("llm_arch", ["qwen2", "internlm2", "llama"])
def test_native_chat_native_round_trip_is_exact(native_models, llm_arch):
    state, config, _ = _native(native_models, llm_arch)
    chat_state, chat_config = native_to_internvl_chat(state, config, llm_arch=llm_arch, training_fields=TRAINING)
    back_state, back_config = internvl_chat_to_native(chat_state, chat_config, image_token_id=IMAGE_TOKEN_ID)

    assert sorted(back_state) == sorted(state)
    for key, tensor in state.items():
        assert torch.equal(back_state[key], tensor), key
    for key, value in config.items():  # every field save_pretrained wrote, nested ones included
        if key == "transformers_version":
            continue
        if isinstance(value, dict):
            for sub_key, sub_value in value.items():
                assert back_config[key][sub_key] == sub_value, f"{key}.{sub_key}"
        else:
            assert back_config[key] == value, key


def test_chat_layout_names_and_shapes(native_models):
    state, config, _ = native_models["llama"]
    chat_state, chat_config = native_to_internvl_chat(state, config, llm_arch="internlm2", training_fields=TRAINING)
    shapes = {key: tuple(t.shape) for key, t in chat_state.items()}
    assert shapes["vision_model.embeddings.class_embedding"] == (1, 1, 32)
    assert shapes["vision_model.embeddings.position_embedding"] == (1, 5, 32)
    assert shapes["vision_model.encoder.layers.1.attn.qkv.weight"] == (96, 32)
    assert "vision_model.encoder.layers.1.attn.qkv.bias" not in shapes  # qkv_bias=False
    assert shapes["vision_model.encoder.layers.1.attn.q_norm.weight"] == (32,)
    assert shapes["vision_model.encoder.layers.0.ls1"] == (32,)
    assert "vision_model.encoder.layers.0.norm1.bias" not in shapes  # RMSNorm
    assert (shapes["mlp1.0.weight"], shapes["mlp1.1.weight"], shapes["mlp1.3.weight"]) == ((128,), (64, 128), (64, 64))
    assert shapes["language_model.model.tok_embeddings.weight"] == (96, 64)
    assert shapes["language_model.model.layers.1.attention.wqkv.weight"] == ((4 + 2 * 2) * 16, 64)
    assert shapes["language_model.model.layers.1.attention.wqkv.bias"] == (128,)
    assert shapes["language_model.model.layers.1.attention.wo.bias"] == (64,)
    assert shapes["language_model.model.layers.0.feed_forward.w2.weight"] == (64, 128)
    assert shapes["language_model.output.weight"] == (96, 64)
    assert not [k for k in shapes if "self_attn" in k or "vision_tower" in k or "multi_modal" in k]

    assert chat_config["architectures"] == ["InternVLChatModel"] and chat_config["model_type"] == "internvl_chat"
    assert chat_config["auto_map"]["AutoModel"] == "modeling_internvl_chat.InternVLChatModel"
    vision, llm = chat_config["vision_config"], chat_config["llm_config"]
    assert (vision["model_type"], vision["qkv_bias"], vision["qk_normalization"], vision["norm_type"]) == (
        "intern_vit_6b", False, True, "rms_norm")
    assert (vision["image_size"], vision["patch_size"], vision["initializer_factor"]) == (28, 14, 0.1)
    assert llm["architectures"] == ["InternLM2ForCausalLM"] and llm["model_type"] == "internlm2"
    assert (llm["bias"], llm["rope_theta"], llm["rope_scaling"]) == (True, 1e6, {"type": "dynamic", "factor": 2.0})
    assert llm["num_key_value_heads"] == 2 and llm["tie_word_embeddings"] is False
    assert (chat_config["select_layer"], chat_config["downsample_ratio"], chat_config["use_llm_lora"]) == (-1, 0.5, 0)


def test_wqkv_rows_follow_internlm2_grouping():
    # 4 query heads, 2 KV heads (2 query heads per group), head_dim 2, 3 input features.
    heads, kv_heads, head_dim, width = 4, 2, 2, 3
    q = torch.arange(heads * head_dim * width).reshape(heads * head_dim, width)
    k = 1000 + torch.arange(kv_heads * head_dim * width).reshape(kv_heads * head_dim, width)
    v = 2000 + torch.arange(kv_heads * head_dim * width).reshape(kv_heads * head_dim, width)
    wqkv = group_wqkv(q, k, v, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim)

    def head(t, i):
        return t[i * head_dim:(i + 1) * head_dim]

    expected = torch.cat([head(q, 0), head(q, 1), head(k, 0), head(v, 0),   # group 0: q0 q1 k0 v0
                          head(q, 2), head(q, 3), head(k, 1), head(v, 1)])  # group 1: q2 q3 k1 v1
    assert torch.equal(wqkv, expected)
    assert all(torch.equal(a, b) for a, b in zip(ungroup_wqkv(wqkv, num_heads=heads, num_kv_heads=kv_heads,
                                                              head_dim=head_dim), (q, k, v)))
    bias = group_wqkv(q[:, 0], k[:, 0], v[:, 0], num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim)
    assert torch.equal(bias, expected[:, 0])


def test_wqkv_projection_matches_internlm2_attention_split():
    # InternLM2Attention.forward: rearrange(wqkv(x), 'b q (h gs d) -> b q h gs d', gs=2 + groups), queries are
    # [..., :groups, :] flattened over (h gs), keys [..., -2, :], values [..., -1, :].
    heads, kv_heads, head_dim, hidden = 8, 2, 4, 32
    groups = heads // kv_heads
    torch.manual_seed(0)
    q = torch.randn(heads * head_dim, hidden)
    k, v = torch.randn(kv_heads * head_dim, hidden), torch.randn(kv_heads * head_dim, hidden)
    x = torch.randn(2, 5, hidden)
    states = (x @ group_wqkv(q, k, v, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim).T)
    states = states.view(2, 5, kv_heads, groups + 2, head_dim)  # b q h gs d
    torch.testing.assert_close(states[..., :groups, :].reshape(2, 5, heads, head_dim),
                               (x @ q.T).view(2, 5, heads, head_dim))
    torch.testing.assert_close(states[..., -2, :], (x @ k.T).view(2, 5, kv_heads, head_dim))
    torch.testing.assert_close(states[..., -1, :], (x @ v.T).view(2, 5, kv_heads, head_dim))


def test_vision_qkv_rows_are_q_then_k_then_v():
    qkv = torch.arange(12).reshape(6, 2)  # D = 2
    q, k, v = split_vision_qkv(qkv)
    assert q.tolist() == [[0, 1], [2, 3]] and k.tolist() == [[4, 5], [6, 7]] and v.tolist() == [[8, 9], [10, 11]]
    assert q.untyped_storage().data_ptr() != qkv.untyped_storage().data_ptr()  # safetensors-safe copies


@pytest.mark.parametrize("llm_arch", ["qwen2", "internlm2"])
def test_official_class_loads_mapped_weights(native_models, llm_arch, tmp_path):
    """Oracle: a chat checkpoint mapped back loads into InternVLForConditionalGeneration with nothing missing
    and gives the same logits as the model it came from."""
    state, config, native_dir = _native(native_models, llm_arch)
    chat_dir = write_tiny_internvl_chat_checkpoint(native_dir, tmp_path / "chat", llm_arch=llm_arch,
                                                   template="internvl2_5")
    remote_code = ["configuration_intern_vit.py", "configuration_internvl_chat.py", "conversation.py",
                   "modeling_intern_vit.py", "modeling_internvl_chat.py"]
    if llm_arch == "internlm2":
        remote_code += ["configuration_internlm2.py", "modeling_internlm2.py"]
    assert sorted(p.name for p in chat_dir.iterdir() if p.suffix == ".py") == sorted(remote_code)
    assert (chat_dir / "conversation.py").read_text().count("\n") == 1

    chat_state = load_file(chat_dir / "model.safetensors")
    chat_config = json.loads((chat_dir / "config.json").read_text())
    native_state, hf_config = internvl_chat_to_native(chat_state, chat_config, image_token_id=IMAGE_TOKEN_ID)
    out = tmp_path / "native"
    out.mkdir()
    save_file(native_state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config))
    loaded, info = InternVLForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    params = dict(loaded.state_dict())
    for key, tensor in state.items():
        # the in-memory names transformers loads the saved ones into
        name = "lm_head.weight" if key.endswith("lm_head.weight") else "model." + key.replace(".model.", ".", 1)
        official = params[name]
        assert torch.equal(official, tensor), key

    original = InternVLForConditionalGeneration.from_pretrained(native_dir).eval()
    input_ids = torch.tensor([[1, 2, IMAGE_TOKEN_ID, 3, 4, 5]])
    pixel_values = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        expected = original(input_ids=input_ids, pixel_values=pixel_values).logits
        got = loaded.eval()(input_ids=input_ids, pixel_values=pixel_values).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_streaming_matches_dict_and_buffers_only_the_layer_in_flight(native_models):
    state, config, _ = native_models["llama"]
    items = list(state.items())
    random.Random(0).shuffle(items)
    expected, _ = native_to_internvl_chat(state, config, llm_arch="internlm2", training_fields=TRAINING)
    streamed = dict(iter_native_to_chat(items, config, llm_arch="internlm2"))
    assert streamed.keys() == expected.keys()
    assert all(torch.equal(streamed[k], expected[k]) for k in expected)

    # In save order, layer 0's wqkv comes out before layer 1's tensors are read.
    consumed = []

    def source():
        for key, tensor in state.items():
            consumed.append(key)
            yield key, tensor

    for key, _ in iter_native_to_chat(source(), config, llm_arch="internlm2"):
        if key == "language_model.model.layers.0.attention.wqkv.weight":
            assert not [k for k in consumed if k.startswith("language_model.model.layers.1.")]
            break

    chat_state = expected
    chat_items = list(chat_state.items())
    random.Random(1).shuffle(chat_items)
    chat_config = native_config_to_chat(config, llm_arch="internlm2", training_fields=TRAINING)
    back, _ = internvl_chat_to_native(chat_state, chat_config, image_token_id=IMAGE_TOKEN_ID)
    streamed_back = dict(iter_chat_to_native(chat_items, chat_config))
    assert streamed_back.keys() == back.keys()
    assert all(torch.equal(streamed_back[k], back[k]) for k in back)


def test_an_untied_model_does_not_hold_its_embeddings_while_streaming(native_models):
    import gc
    import weakref

    state, config, _ = native_models["llama"]
    embed_key = "language_model.model.embed_tokens.weight"
    assert list(state).index(embed_key) < len(state) - 1
    embed = {}

    def source():
        for key, tensor in state.items():
            tensor = tensor.clone()  # ours alone, so the weakref dies when the converter lets go
            if key == embed_key:
                embed["ref"] = weakref.ref(tensor)
            yield key, tensor

    after_embed = 0
    for key, tensor in iter_native_to_chat(source(), config, llm_arch="internlm2"):
        del tensor
        if "ref" in embed and not key.startswith("language_model.model.tok_embeddings"):
            gc.collect()
            assert embed["ref"]() is None, f"the embeddings are still held when {key} comes out"
            after_embed += 1
    assert after_embed > 0


def test_key_helpers():
    assert chat_key_to_native("mlp1.3.bias", llm_arch="qwen2") == ("multi_modal_projector.linear_2.bias",)
    assert chat_key_to_native("language_model.output.weight", llm_arch="internlm2") == (
        "language_model.lm_head.weight",)
    assert native_key_to_chat("language_model.model.layers.3.mlp.up_proj.weight", llm_arch="internlm2") == (
        "language_model.model.layers.3.feed_forward.w3.weight")
    assert native_key_to_chat("language_model.model.layers.3.mlp.up_proj.weight", llm_arch="qwen2") == (
        "language_model.model.layers.3.mlp.up_proj.weight")
    assert native_key_to_chat("vision_tower.encoder.layer.1.layernorm_after.bias", llm_arch="llama") == (
        "vision_model.encoder.layers.1.norm2.bias")


def test_native_weight_names_match_save_pretrained(native_models):
    for state, config, _ in native_models.values():
        assert sorted(native_weight_names(config)) == sorted(state)


@pytest.mark.parametrize("bad_key", ["vision_tower.encoder.layer.2.lambda_1",  # layer out of range
                                     "language_model.model.layers.0.self_attn.q_norm.weight",
                                     "something.else"])
def test_unknown_native_key_is_a_layout_error_naming_it(native_models, bad_key):
    state, config, _ = native_models["qwen2"]
    with pytest.raises(LayoutError, match=bad_key.replace(".", r"\.")) as error:
        native_to_internvl_chat({**state, bad_key: torch.zeros(1)}, config, llm_arch="qwen2", training_fields=TRAINING)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("bad_key", ["vision_model.encoder.layers.0.attn.qkv.bias",  # qkv_bias=False here
                                     "language_model.model.layers.0.attention.wq.weight",
                                     "mlp1.2.weight"])
def test_unknown_chat_key_is_a_layout_error_naming_it(native_models, bad_key):
    state, config, _ = native_models["llama"]
    chat_state, chat_config = native_to_internvl_chat(state, config, llm_arch="internlm2", training_fields=TRAINING)
    with pytest.raises(LayoutError, match=bad_key.replace(".", r"\.")):
        internvl_chat_to_native({**chat_state, bad_key: torch.zeros(96)}, chat_config, image_token_id=IMAGE_TOKEN_ID)


def test_missing_key_is_a_layout_error_naming_it(native_models):
    state, config, _ = native_models["llama"]
    partial = {k: v for k, v in state.items() if k != "vision_tower.encoder.layer.1.attention.v_proj.weight"}
    with pytest.raises(LayoutError, match=r"vision_tower\.encoder\.layer\.1\.attention\.v_proj\.weight"):
        native_to_internvl_chat(partial, config, llm_arch="internlm2", training_fields=TRAINING)
    chat_state, chat_config = native_to_internvl_chat(state, config, llm_arch="internlm2", training_fields=TRAINING)
    del chat_state["language_model.model.layers.1.attention.wqkv.bias"]
    with pytest.raises(LayoutError,
                       match=r"InternVL-chat weights lack 'language_model\.model\.layers\.1\.attention\.wqkv"):
        internvl_chat_to_native(chat_state, chat_config, image_token_id=IMAGE_TOKEN_ID)


def test_training_fields_override_a_stale_base(native_models):
    _, config, _ = native_models["llama"]
    _, stale = native_to_internvl_chat(native_models["llama"][0], config, llm_arch="internlm2",
                                       training_fields=dict(TRAINING, template="internlm2-chat"))
    stale.update(template="stale-template", max_dynamic_patch=6, use_thumbnail=False, dynamic_image_size=False,
                 force_image_size=448, use_llm_lora=128, pad2square=True)
    stale["vision_config"].update(use_flash_attn=True, drop_path_rate=0.1, hidden_size=3200)
    stale["llm_config"].update(attn_implementation="flash_attention_2", vocab_size=92553)

    fresh = native_config_to_chat(config, llm_arch="internlm2", training_fields=TRAINING, base_config=stale)
    assert {k: fresh[k] for k in TRAINING} == TRAINING
    assert fresh["use_llm_lora"] == 0 and fresh["pad2square"] is True  # merged weights; base-only field carried
    assert fresh["vision_config"]["use_flash_attn"] is True and fresh["vision_config"]["drop_path_rate"] == 0.0
    assert fresh["vision_config"]["hidden_size"] == 32 and fresh["llm_config"]["vocab_size"] == 96
    assert fresh["llm_config"]["attn_implementation"] == "eager"


@pytest.mark.parametrize("fields, message", [
    ({k: v for k, v in TRAINING.items() if k != "template"}, "'template' is missing"),
    (dict(TRAINING, ps_version="v1"), "ps_version='v1'"),
    (dict(TRAINING, downsample_ratio=0.25), "downsample_ratio=0.25 disagrees"),
    (dict(TRAINING, tile_size=448), "unknown training field 'tile_size'"),
    (dict(TRAINING, force_image_size=448), "image_seq_length=1"),
])
def test_bad_training_fields(native_models, fields, message):
    _, config, _ = native_models["qwen2"]
    with pytest.raises(LayoutError, match=message):
        native_config_to_chat(config, llm_arch="qwen2", training_fields=fields)


def test_native_configs_without_a_chat_equivalent_are_refused(native_models):
    _, config, _ = native_models["qwen2"]
    with pytest.raises(LayoutError, match="use_mean_pooling=False"):
        native_config_to_chat(dict(config, vision_config=dict(config["vision_config"], use_mean_pooling=False)),
                              llm_arch="qwen2", training_fields=TRAINING)
    with pytest.raises(LayoutError, match="llm_arch='internlm2'"):
        native_config_to_chat(config, llm_arch="internlm2", training_fields=TRAINING)


def test_released_internvl2_chat_config_maps_to_native():
    """An InternVL2-2B-shaped config.json (InternViT-300M + InternLM2), shrunk, with the fields it really has."""
    chat_config = {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "torch_dtype": "bfloat16",
        "template": "internlm2-chat", "downsample_ratio": 0.5, "ps_version": "v2", "select_layer": -1,
        "force_image_size": 448, "dynamic_image_size": True, "min_dynamic_patch": 1, "max_dynamic_patch": 12,
        "use_thumbnail": True, "use_backbone_lora": 0, "use_llm_lora": 0,
        "vision_config": {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", "hidden_size": 64,
                          "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256, "qkv_bias": True,
                          "qk_normalization": False, "norm_type": "layer_norm", "layer_norm_eps": 1e-6,
                          "image_size": 448, "patch_size": 14, "drop_path_rate": 0.1, "initializer_factor": 1.0,
                          "dropout": 0.0, "attention_dropout": 0.0, "use_flash_attn": True, "hidden_act": "gelu"},
        "llm_config": {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "bias": False,
                       "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 8,
                       "num_key_value_heads": 2, "vocab_size": 92553, "max_position_embeddings": 32768,
                       "rms_norm_eps": 1e-5, "rope_theta": 1000000, "rope_scaling": {"type": "dynamic", "factor": 2.0},
                       "attn_implementation": "flash_attention_2", "tie_word_embeddings": False, "pad_token_id": 2},
    }
    hf_config = chat_config_to_native(chat_config, image_token_id=92546)
    vision, text = hf_config["vision_config"], hf_config["text_config"]
    assert (vision["attention_bias"], vision["use_qk_norm"], vision["layer_scale_init_value"]) == (True, False, 1.0)
    assert vision["image_size"] == [448, 448] and vision["model_type"] == "internvl_vision"
    assert text["model_type"] == "llama" and text["attention_bias"] is False and text["mlp_bias"] is False
    assert text["rope_parameters"] == {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1000000}
    assert text["head_dim"] == 16 and text["num_key_value_heads"] == 2 and text["pad_token_id"] == 2
    assert hf_config["image_token_id"] == 92546 and hf_config["image_seq_length"] == 256
    assert hf_config["vision_feature_layer"] == -1
    assert hf_config["tie_word_embeddings"] is False and hf_config["dtype"] == "bfloat16"
    built = InternVLConfig(**hf_config)
    assert built.text_config.rope_parameters["rope_type"] == "dynamic"
    assert list(built.vision_config.image_size) == [448, 448]

    with pytest.raises(LayoutError, match="ps_version='v1'"):
        chat_config_to_native(dict(chat_config, ps_version="v1"), image_token_id=1)
    with pytest.raises(LayoutError, match="use_llm_lora=128"):
        chat_config_to_native(dict(chat_config, use_llm_lora=128), image_token_id=1)
    with pytest.raises(LayoutError, match="GptOssForCausalLM"):
        chat_config_to_native(dict(chat_config, llm_config={"architectures": ["GptOssForCausalLM"]}), image_token_id=1)


def test_tied_chat_head_is_written_out_from_the_embeddings(native_models):
    state, config, _ = native_models["qwen2"]
    chat_state, chat_config = native_to_internvl_chat(state, config, llm_arch="qwen2", training_fields=TRAINING)
    del chat_state["language_model.lm_head.weight"]
    chat_config["llm_config"]["tie_word_embeddings"] = True  # e.g. InternVL2-1B's Qwen2-0.5B
    native_state, hf_config = internvl_chat_to_native(chat_state, chat_config, image_token_id=IMAGE_TOKEN_ID)
    assert torch.equal(native_state["language_model.lm_head.weight"], state["language_model.model.embed_tokens.weight"])
    assert hf_config["tie_word_embeddings"] is False and hf_config["text_config"]["tie_word_embeddings"] is False
