"""Map InternVL weights and configs between the original InternVL-chat layout and the transformers-native one.

Two layouts hold the same model:

- *native* (vlft's own, and what ``transformers.InternVLForConditionalGeneration.save_pretrained`` writes):
  ``vision_tower.*`` with split q/k/v, ``multi_modal_projector.{layer_norm,linear_1,linear_2}``,
  ``language_model.model.*`` in Qwen2/Llama names and ``language_model.lm_head.weight``. InternLM2 LLMs
  live here as Llama.
- *chat* (``InternVLChatModel``, trust_remote_code, e.g. OpenGVLab/InternVL2-2B): ``vision_model.*`` with a
  fused ``attn.qkv``, ``mlp1.{0,1,3}``, and ``language_model.*`` in the LLM's own names (InternLM2: a
  grouped ``wqkv``, ``wo``, ``feed_forward.w1/w2/w3``, ``output``).

Everything here is a pure function of tensors and dicts: no model is built and nothing is read from
disk (``write_tiny_internvl_chat_checkpoint`` only writes). The ``iter_*`` functions stream tensor by
tensor so an export never holds the whole model; the only tensors they buffer are the q/k/v pieces of
the attention layer being fused and, for tied embeddings, a reference to the embedding matrix.

Format facts this relies on (checked against the sources):

- InternViT ``attn.qkv`` rows are ``q | k | v`` (``qkv.reshape(B, N, 3, H, Dh)`` in
  ``modeling_intern_vit.py``; transformers' ``convert_internvl_weights_to_hf.py`` slices ``[:D]``,
  ``[D:2D]``, ``[-D:]``). ``q_norm``/``k_norm`` act on the full width in both implementations.
- InternLM2 ``wqkv`` rows are grouped per KV head: ``rearrange(qkv, 'b q (h gs d) -> b q h gs d',
  gs=2 + num_key_value_groups)``; the first ``num_key_value_groups`` slots are that group's query heads,
  then one key head, then one value head (``modeling_internlm2.py``). Its ``bias`` flag covers ``wqkv``
  and ``wo`` only; the MLP has no bias.
- ``mlp1`` is ``Sequential(LayerNorm, Linear, GELU, Linear)``, so indices 0, 1, 3 hold weights
  (``modeling_internvl_chat.py``). The chat model drops the CLS token, takes ``hidden_states[select_layer]``
  (last hidden state for -1) and only ``ps_version='v2'`` matches transformers' pixel shuffle.
- Config defaults: ``configuration_intern_vit.py`` (``qkv_bias=False``, ``qk_normalization=True``,
  ``norm_type='rms_norm'``, ``initializer_factor=0.1`` is the layer-scale init), ``configuration_internlm2.py``
  (``bias=True``, ``rope_theta=10000``, ``rope_scaling={'type', 'factor'}``), and
  ``configuration_internvl_chat.py`` (``ps_version='v1'``, ``select_layer=-1``, ``max_dynamic_patch=6``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlft.errors import VlftError

__all__ = [
    "LLM_ARCHS",
    "TRAINING_FIELDS",
    "LayoutError",
    "chat_config_to_native",
    "chat_key_to_native",
    "chat_training_fields",
    "fuse_vision_qkv",
    "group_wqkv",
    "internvl_chat_to_native",
    "iter_chat_to_native",
    "iter_native_to_chat",
    "llm_arch_of_chat_config",
    "native_config_to_chat",
    "native_key_to_chat",
    "native_to_internvl_chat",
    "native_weight_names",
    "remote_code_files",
    "split_vision_qkv",
    "ungroup_wqkv",
    "write_tiny_internvl_chat_checkpoint",
]

LLM_ARCHS = ("internlm2", "qwen2", "llama")

# The chat config fields that describe how the model was trained and must be written from the run's
# values. `downsample_ratio` and `select_layer` are also fixed by the native config; when given they
# must agree with it.
_REQUIRED_TRAINING_FIELDS = (
    "template",
    "ps_version",
    "force_image_size",
    "dynamic_image_size",
    "min_dynamic_patch",
    "max_dynamic_patch",
    "use_thumbnail",
)
TRAINING_FIELDS = (*_REQUIRED_TRAINING_FIELDS, "downsample_ratio", "select_layer")


class LayoutError(VlftError, ValueError):
    """Weights or a config that do not fit the layout they are read as (one line, names the key)."""


# --------------------------------------------------------------------------------------------------
# Defaults of the original config classes (used when a chat config.json leaves a field out).

_CHAT_DEFAULTS = {  # configuration_internvl_chat.py: InternVLChatConfig.__init__
    "use_backbone_lora": 0,
    "use_llm_lora": 0,
    "pad2square": False,
    "select_layer": -1,
    "force_image_size": None,
    "downsample_ratio": 0.5,
    "template": None,
    "dynamic_image_size": False,
    "use_thumbnail": False,
    "ps_version": "v1",
    "min_dynamic_patch": 1,
    "max_dynamic_patch": 6,
}
_INTERN_VIT_DEFAULTS = {  # configuration_intern_vit.py: InternVisionConfig.__init__
    "num_channels": 3,
    "patch_size": 14,
    "image_size": 224,
    "qkv_bias": False,
    "hidden_size": 3200,
    "num_attention_heads": 25,
    "intermediate_size": 12800,
    "qk_normalization": True,
    "num_hidden_layers": 48,
    "hidden_act": "gelu",
    "norm_type": "rms_norm",
    "layer_norm_eps": 1e-6,
    "dropout": 0.0,
    "drop_path_rate": 0.0,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 0.1,
}
_INTERNLM2_DEFAULTS = {  # configuration_internlm2.py: InternLM2Config.__init__
    "vocab_size": 103168,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": None,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "use_cache": True,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "bias": True,
    "rope_theta": 10000,
    "rope_scaling": None,
}
_CHAT_AUTO_MAP = {
    "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
    "AutoModel": "modeling_internvl_chat.InternVLChatModel",
    "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
}
_INTERNLM2_AUTO_MAP = {
    "AutoConfig": "configuration_internlm2.InternLM2Config",
    "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
}
_LLM_ARCHITECTURE = {  # llm_arch -> (chat llm_config architectures[0], native text_config model_type)
    "internlm2": ("InternLM2ForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "llama": ("LlamaForCausalLM", "llama"),
}
# Native config fields the chat layout has no place for: they must hold the value the chat model implies.
_IMPLIED_NATIVE_VISION = {
    "use_mask_token": False,
    "use_absolute_position_embeddings": True,
    "use_mean_pooling": True,  # InternViT has no final LayerNorm
    "num_channels": 3,  # InternViT's patch Conv2d hard-codes 3 input channels
}

# --------------------------------------------------------------------------------------------------
# Key names. Tables map chat names to native names; the reverse maps are derived, so they cannot drift.

_VIT_CHAT_LAYERS = "vision_model.encoder.layers."
_VIT_NATIVE_LAYERS = "vision_tower.encoder.layer."
_LLM_LAYERS = "language_model.model.layers."  # the same prefix in both layouts

_FLAT = {  # whole keys, every LLM
    "vision_model.embeddings.class_embedding": "vision_tower.embeddings.cls_token",
    "vision_model.embeddings.position_embedding": "vision_tower.embeddings.position_embeddings",
    "vision_model.embeddings.patch_embedding.weight": "vision_tower.embeddings.patch_embeddings.projection.weight",
    "vision_model.embeddings.patch_embedding.bias": "vision_tower.embeddings.patch_embeddings.projection.bias",
    "mlp1.0.weight": "multi_modal_projector.layer_norm.weight",
    "mlp1.0.bias": "multi_modal_projector.layer_norm.bias",
    "mlp1.1.weight": "multi_modal_projector.linear_1.weight",
    "mlp1.1.bias": "multi_modal_projector.linear_1.bias",
    "mlp1.3.weight": "multi_modal_projector.linear_2.weight",
    "mlp1.3.bias": "multi_modal_projector.linear_2.bias",
}
_VIT_LAYER = {  # suffix after "<prefix>N."
    "ls1": "lambda_1",
    "ls2": "lambda_2",
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "attn.proj.weight": "attention.projection_layer.weight",
    "attn.proj.bias": "attention.projection_layer.bias",
    "attn.q_norm.weight": "attention.q_norm.weight",
    "attn.k_norm.weight": "attention.k_norm.weight",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_VIT_LAYER_FUSED = {
    f"attn.qkv.{p}": tuple(f"attention.{n}_proj.{p}" for n in "qkv") for p in ("weight", "bias")
}
_INTERNLM2_FLAT = {
    "language_model.model.tok_embeddings.weight": "language_model.model.embed_tokens.weight",
    "language_model.model.norm.weight": "language_model.model.norm.weight",
    "language_model.output.weight": "language_model.lm_head.weight",
}
_INTERNLM2_LAYER = {
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention.wo.bias": "self_attn.o_proj.bias",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_INTERNLM2_LAYER_FUSED = {
    f"attention.wqkv.{p}": tuple(f"self_attn.{n}_proj.{p}" for n in "qkv") for p in ("weight", "bias")
}

_EMBED = "language_model.model.embed_tokens.weight"
_LM_HEAD = "language_model.lm_head.weight"
# Non-persistent buffers that some older chat checkpoints saved; they are recomputed, never loaded.
_IGNORED_CHAT_SUFFIXES = (".rotary_emb.inv_freq",)


def _invert(table: Mapping[str, str]) -> dict[str, str]:
    return {native: chat for chat, native in table.items()}


def _invert_fused(table: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, int]]:
    return {native: (chat, slot) for chat, natives in table.items() for slot, native in enumerate(natives)}


_FLAT_REV = _invert(_FLAT)
_VIT_LAYER_REV = _invert(_VIT_LAYER)
_VIT_LAYER_FUSED_REV = _invert_fused(_VIT_LAYER_FUSED)
_INTERNLM2_FLAT_REV = _invert(_INTERNLM2_FLAT)
_INTERNLM2_LAYER_REV = _invert(_INTERNLM2_LAYER)
_INTERNLM2_LAYER_FUSED_REV = _invert_fused(_INTERNLM2_LAYER_FUSED)


def _split_layer(key: str, prefix: str) -> tuple[str, str] | None:
    """'<prefix>12.attn.proj.weight' -> ('12', 'attn.proj.weight'); None if key is not a layer key."""
    if not key.startswith(prefix):
        return None
    index, _, suffix = key[len(prefix) :].partition(".")
    return (index, suffix) if index.isdigit() and suffix else None


def _check_arch(llm_arch: str) -> None:
    if llm_arch not in LLM_ARCHS:
        raise LayoutError(f"unsupported llm_arch {llm_arch!r}; expected one of {', '.join(LLM_ARCHS)}")


def _layer_names(key: str, layers: str, target_layers: str, renames: Mapping[str, str],
                 fused: Mapping[str, tuple[str, ...]]) -> tuple[str, ...] | None:
    """A per-layer key's target name(s): one through `renames`, the three parts of a fused weight through
    `fused`; None when the key is no layer weight of `layers` or its suffix is in neither table."""
    if (parts := _split_layer(key, layers)) is None:
        return None
    index, suffix = parts
    prefix = f"{target_layers}{index}."
    if suffix in renames:
        return (prefix + renames[suffix],)
    if suffix in fused:
        return tuple(prefix + name for name in fused[suffix])
    return None


def _layer_slot(key: str, layers: str, target_layers: str, renames: Mapping[str, str],
                fused: Mapping[str, tuple[str, int]]) -> tuple[str, int | None] | None:
    """The reverse of _layer_names for one key: (target name, slot in the fused weight or None), or None."""
    if (parts := _split_layer(key, layers)) is None:
        return None
    index, suffix = parts
    prefix = f"{target_layers}{index}."
    if suffix in renames:
        return prefix + renames[suffix], None
    if suffix in fused:
        chat, slot = fused[suffix]
        return prefix + chat, slot
    return None


def chat_key_to_native(key: str, *, llm_arch: str) -> tuple[str, ...]:
    """Native key(s) that one InternVL-chat weight becomes: three for a fused qkv/wqkv, else one.

    >>> chat_key_to_native("vision_model.encoder.layers.3.ls1", llm_arch="qwen2")
    ('vision_tower.encoder.layer.3.lambda_1',)
    >>> chat_key_to_native("language_model.model.layers.0.attention.wqkv.weight", llm_arch="internlm2")[1]
    'language_model.model.layers.0.self_attn.k_proj.weight'

    Raises LayoutError when the name has no place in the layout. (Whether the key belongs to a given
    config, e.g. a layer index in range, is checked by the converters.)
    """
    _check_arch(llm_arch)
    if key in _FLAT:
        return (_FLAT[key],)
    names = _layer_names(key, _VIT_CHAT_LAYERS, _VIT_NATIVE_LAYERS, _VIT_LAYER, _VIT_LAYER_FUSED)
    if names is None and key.startswith("language_model."):
        if llm_arch in ("qwen2", "llama"):  # already in transformers names
            return (key,)
        if key in _INTERNLM2_FLAT:
            return (_INTERNLM2_FLAT[key],)
        names = _layer_names(key, _LLM_LAYERS, _LLM_LAYERS, _INTERNLM2_LAYER, _INTERNLM2_LAYER_FUSED)
    if names is not None:
        return names
    raise LayoutError(f"unknown key {key!r} in InternVL-chat weights (llm_arch={llm_arch})")


def _native_to_chat_slot(key: str, llm_arch: str) -> tuple[str, int | None]:
    """(chat key, slot in the fused tensor or None) for one native key."""
    _check_arch(llm_arch)
    if key in _FLAT_REV:
        return _FLAT_REV[key], None
    slot = _layer_slot(key, _VIT_NATIVE_LAYERS, _VIT_CHAT_LAYERS, _VIT_LAYER_REV, _VIT_LAYER_FUSED_REV)
    if slot is None and key.startswith("language_model."):
        if llm_arch in ("qwen2", "llama"):
            return key, None
        if key in _INTERNLM2_FLAT_REV:
            return _INTERNLM2_FLAT_REV[key], None
        slot = _layer_slot(key, _LLM_LAYERS, _LLM_LAYERS, _INTERNLM2_LAYER_REV, _INTERNLM2_LAYER_FUSED_REV)
    if slot is not None:
        return slot
    raise LayoutError(f"unknown key {key!r} in transformers-native InternVL weights (llm_arch={llm_arch})")


def native_key_to_chat(key: str, *, llm_arch: str) -> str:
    """The InternVL-chat key one native weight goes into (q/k/v_proj all go into the fused qkv/wqkv).

    >>> native_key_to_chat("vision_tower.encoder.layer.0.attention.k_proj.bias", llm_arch="qwen2")
    'vision_model.encoder.layers.0.attn.qkv.bias'
    """
    return _native_to_chat_slot(key, llm_arch)[0]


# --------------------------------------------------------------------------------------------------
# Tensor (un)fusing. Every returned tensor owns fresh contiguous storage (safetensors refuses views
# that share memory).


def _fresh(t: Tensor) -> Tensor:
    return t.clone(memory_format=torch.contiguous_format)


def split_vision_qkv(qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """InternViT ``attn.qkv`` [3*D, ...] -> q, k, v [D, ...]; the rows are q | k | v."""
    if qkv.shape[0] % 3:
        raise LayoutError(f"fused qkv has {qkv.shape[0]} rows, not a multiple of 3")
    q, k, v = qkv.chunk(3, dim=0)
    return _fresh(q), _fresh(k), _fresh(v)


def fuse_vision_qkv(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """q, k, v [D, ...] -> InternViT ``attn.qkv`` [3*D, ...]."""
    return torch.cat([q, k, v], dim=0)


def ungroup_wqkv(
    wqkv: Tensor, *, num_heads: int, num_kv_heads: int, head_dim: int
) -> tuple[Tensor, Tensor, Tensor]:
    """InternLM2 ``wqkv`` [(H + 2*KV)*Dh, ...] -> q [H*Dh, ...], k [KV*Dh, ...], v [KV*Dh, ...].

    Rows are grouped per KV head: [q heads of group 0, k_0, v_0, q heads of group 1, k_1, v_1, ...]
    (InternLM2's ``rearrange(qkv, 'b q (h gs d) -> b q h gs d', gs=2 + num_key_value_groups)``).
    Works for the weight [rows, in] and the bias [rows].
    """
    groups = num_heads // num_kv_heads
    rest = wqkv.shape[1:]
    grouped = wqkv.reshape(num_kv_heads, groups + 2, head_dim, *rest)  # [KV, G+2, Dh, ...]
    q = grouped[:, :groups].reshape(num_heads * head_dim, *rest)
    k = grouped[:, groups].reshape(num_kv_heads * head_dim, *rest)
    v = grouped[:, groups + 1].reshape(num_kv_heads * head_dim, *rest)
    return _fresh(q), _fresh(k), _fresh(v)


def group_wqkv(q: Tensor, k: Tensor, v: Tensor, *, num_heads: int, num_kv_heads: int, head_dim: int) -> Tensor:
    """Inverse of :func:`ungroup_wqkv`: q, k, v -> InternLM2 ``wqkv`` grouped per KV head."""
    groups = num_heads // num_kv_heads
    rest = q.shape[1:]
    parts = [
        q.reshape(num_kv_heads, groups, head_dim, *rest),  # [KV, G, Dh, ...]
        k.reshape(num_kv_heads, 1, head_dim, *rest),
        v.reshape(num_kv_heads, 1, head_dim, *rest),
    ]
    return torch.cat(parts, dim=1).reshape((num_heads + 2 * num_kv_heads) * head_dim, *rest)


# --------------------------------------------------------------------------------------------------
# Configs.


def _config_classes() -> dict[str, Any]:
    import transformers  # heavy; only the config functions need it

    return {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig}


def _own_fields(model_type: str) -> tuple[str, ...]:
    """The fields a transformers text config class declares itself (not PreTrainedConfig's)."""
    return tuple(_config_classes()[model_type].__annotations__)


def _rope_from_legacy(rope_theta: float, rope_scaling: Mapping | None) -> dict:
    """transformers-4 ``rope_theta`` + ``rope_scaling`` -> transformers-5 ``rope_parameters``."""
    if not rope_scaling:
        return {"rope_type": "default", "rope_theta": rope_theta}
    params = {k: v for k, v in rope_scaling.items() if k not in ("type", "rope_type")}
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
    return {"rope_type": rope_type, **params, "rope_theta": rope_theta}


def _rope_to_legacy(rope_parameters: Mapping, *, internlm2: bool) -> tuple[float, dict | None]:
    """transformers-5 ``rope_parameters`` -> (``rope_theta``, ``rope_scaling``) as a chat config writes them."""
    rope_type = rope_parameters.get("rope_type", rope_parameters.get("type", "default"))
    theta = rope_parameters["rope_theta"]
    params = {k: v for k, v in rope_parameters.items() if k not in ("type", "rope_type", "rope_theta")}
    if rope_type == "default":
        return theta, None
    if set(params) == {"factor"} and rope_type in ("linear", "dynamic"):
        # The two-field form is what InternLM2Config (and transformers < 4.45) accept.
        return theta, {"type": rope_type, "factor": params["factor"]}
    if internlm2:
        raise LayoutError(f"rope_parameters {dict(rope_parameters)} has no InternLM2 equivalent (linear/dynamic only)")
    return theta, {"rope_type": rope_type, **params}


def llm_arch_of_chat_config(chat_config: Mapping) -> str:
    """'internlm2' | 'qwen2' | 'llama' from ``llm_config.architectures[0]``."""
    llm_config = chat_config.get("llm_config") or {}
    architecture = (llm_config.get("architectures") or [None])[0]
    for arch, (name, _) in _LLM_ARCHITECTURE.items():
        if architecture == name:
            return arch
    supported = ", ".join(name for name, _ in _LLM_ARCHITECTURE.values())
    raise LayoutError(f"llm_config.architectures[0]={architecture!r} is not supported; expected one of {supported}")


def chat_training_fields(chat_config: Mapping) -> dict:
    """The training/preprocessing fields of a chat config.json, with InternVLChatConfig's defaults."""
    return {name: chat_config.get(name, _CHAT_DEFAULTS[name]) for name in TRAINING_FIELDS}


def _square(value: Any, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise LayoutError(f"vision_config.{name}={list(value)}: the InternVL-chat layout needs a square size")
        return int(value[0])
    return int(value)


def _image_seq_length(image_size: int, patch_size: int, downsample_ratio: float) -> int:
    # modeling_internvl_chat.py: int((image_size // patch_size) ** 2 * (downsample_ratio ** 2))
    return int((image_size // patch_size) ** 2 * (downsample_ratio**2))


def _native_vision_from_chat(chat_vision: Mapping) -> dict:
    vc = {**_INTERN_VIT_DEFAULTS, **chat_vision}
    image_size, patch_size = _square(vc["image_size"], "image_size"), _square(vc["patch_size"], "patch_size")
    return {
        "model_type": "internvl_vision",
        "hidden_size": vc["hidden_size"],
        "num_hidden_layers": vc["num_hidden_layers"],
        "num_attention_heads": vc["num_attention_heads"],
        "intermediate_size": vc["intermediate_size"],
        "hidden_act": vc["hidden_act"],
        "attention_bias": vc["qkv_bias"],
        "use_qk_norm": vc["qk_normalization"],
        "norm_type": vc["norm_type"],
        "layer_norm_eps": vc["layer_norm_eps"],
        "layer_scale_init_value": vc["initializer_factor"],
        "initializer_range": vc["initializer_range"],
        "image_size": [image_size, image_size],
        "patch_size": [patch_size, patch_size],
        "attention_dropout": vc["attention_dropout"],
        "projection_dropout": vc["dropout"],  # InternViT applies `dropout` after attn.proj only
        "hidden_dropout_prob": 0.0,
        **_IMPLIED_NATIVE_VISION,
    }


def _chat_vision_from_native(vision: Mapping) -> dict:
    for name, implied in _IMPLIED_NATIVE_VISION.items():
        if vision.get(name, implied) != implied:
            raise LayoutError(
                f"vision_config.{name}={vision[name]!r} has no InternVL-chat equivalent (needs {implied!r})")
    if vision["norm_type"] not in ("layer_norm", "rms_norm"):
        raise LayoutError(f"vision_config.norm_type={vision['norm_type']!r} is not layer_norm or rms_norm")
    return {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "hidden_size": vision["hidden_size"],
        "num_hidden_layers": vision["num_hidden_layers"],
        "num_attention_heads": vision["num_attention_heads"],
        "intermediate_size": vision["intermediate_size"],
        "hidden_act": vision["hidden_act"],
        "qkv_bias": vision["attention_bias"],
        "qk_normalization": vision["use_qk_norm"],
        "norm_type": vision["norm_type"],
        "layer_norm_eps": vision["layer_norm_eps"],
        "initializer_factor": vision["layer_scale_init_value"],
        "initializer_range": vision["initializer_range"],
        "image_size": _square(vision["image_size"], "image_size"),
        "patch_size": _square(vision["patch_size"], "patch_size"),
        "num_channels": 3,
        "attention_dropout": vision["attention_dropout"],
        "dropout": vision["projection_dropout"],
        "drop_path_rate": 0.0,
    }


def _native_text_from_chat(llm_config: Mapping, llm_arch: str) -> dict:
    if llm_arch == "internlm2":
        lc = {**_INTERNLM2_DEFAULTS, **llm_config}
        if lc.get("rope_pos_id_version", "default") not in ("default", None):
            raise LayoutError(f"llm_config.rope_pos_id_version={lc['rope_pos_id_version']!r} has no Llama equivalent")
        num_kv_heads = lc["num_key_value_heads"] or lc["num_attention_heads"]
        return {
            "model_type": "llama",
            "vocab_size": lc["vocab_size"],
            "hidden_size": lc["hidden_size"],
            "intermediate_size": lc["intermediate_size"],
            "num_hidden_layers": lc["num_hidden_layers"],
            "num_attention_heads": lc["num_attention_heads"],
            "num_key_value_heads": num_kv_heads,
            "hidden_act": lc["hidden_act"],
            "max_position_embeddings": lc["max_position_embeddings"],
            "initializer_range": lc["initializer_range"],
            "rms_norm_eps": lc["rms_norm_eps"],
            "use_cache": lc["use_cache"],
            "pad_token_id": lc["pad_token_id"],
            "bos_token_id": lc["bos_token_id"],
            "eos_token_id": lc["eos_token_id"],
            "pretraining_tp": 1,
            "tie_word_embeddings": False,
            "rope_parameters": _rope_from_legacy(lc["rope_theta"], lc["rope_scaling"]),
            "attention_bias": lc["bias"],  # InternLM2's `bias` covers wqkv and wo, like Llama's attention_bias
            "attention_dropout": 0.0,
            "mlp_bias": False,  # InternLM2's feed_forward has no bias
            "head_dim": lc["hidden_size"] // lc["num_attention_heads"],
        }
    model_type = _LLM_ARCHITECTURE[llm_arch][1]
    text = {"model_type": model_type}
    text.update({k: llm_config[k] for k in _own_fields(model_type) if k in llm_config})
    if not llm_config.get("rope_parameters"):
        text["rope_parameters"] = _rope_from_legacy(llm_config.get("rope_theta", 10000.0),
                                                    llm_config.get("rope_scaling"))
    text["tie_word_embeddings"] = False  # a tied head is written out as lm_head (see the weight converters)
    return text


def _chat_llm_from_native(text: Mapping, llm_arch: str, dtype: str | None) -> dict:
    architecture, model_type = _LLM_ARCHITECTURE[llm_arch]
    if text["model_type"] != model_type:
        raise LayoutError(
            f"text_config.model_type={text['model_type']!r} does not fit llm_arch={llm_arch!r} (needs {model_type!r})")
    if llm_arch == "internlm2":
        if text.get("mlp_bias"):
            raise LayoutError("text_config.mlp_bias=True has no InternLM2 equivalent (its feed_forward has no bias)")
        head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
        if head_dim * text["num_attention_heads"] != text["hidden_size"]:
            raise LayoutError(f"text_config.head_dim={head_dim}: InternLM2 needs hidden_size // num_attention_heads")
        rope_theta, rope_scaling = _rope_to_legacy(text["rope_parameters"], internlm2=True)
        llm = {
            "architectures": [architecture],
            "model_type": "internlm2",
            "auto_map": dict(_INTERNLM2_AUTO_MAP),
            **{k: text[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                    "num_attention_heads", "num_key_value_heads", "hidden_act",
                                    "max_position_embeddings", "initializer_range", "rms_norm_eps",
                                    "use_cache", "pad_token_id", "bos_token_id", "eos_token_id")},
            "bias": text["attention_bias"],
            "rope_theta": rope_theta,
            "rope_scaling": rope_scaling,
            "attn_implementation": "eager",
        }
    else:
        fields = {k: text[k] for k in _own_fields(model_type) if k in text and k != "rope_parameters"}
        rope_theta, rope_scaling = _rope_to_legacy(text["rope_parameters"], internlm2=False)
        llm = {"architectures": [architecture], "model_type": model_type, **fields,
               "rope_theta": rope_theta, "rope_scaling": rope_scaling}
    llm["tie_word_embeddings"] = False  # the head is always written out (as output / lm_head)
    if dtype is not None:
        llm["torch_dtype"] = dtype
    return llm


def chat_config_to_native(chat_config: Mapping, *, image_token_id: int) -> dict:
    """InternVL-chat config.json dict -> transformers ``InternVLConfig`` dict.

    ``image_token_id`` is the tokenizer's ``<IMG_CONTEXT>`` id (the chat model looks it up at run time,
    so its config does not hold it).
    """
    llm_arch = llm_arch_of_chat_config(chat_config)
    fields = {**_CHAT_DEFAULTS, **chat_config}
    if fields["ps_version"] != "v2":
        raise LayoutError(
            f"ps_version={fields['ps_version']!r}: transformers' InternVL only implements the 'v2' pixel shuffle")
    for name in ("use_backbone_lora", "use_llm_lora"):
        if fields[name]:
            raise LayoutError(f"{name}={fields[name]}: the checkpoint holds unmerged LoRA weights; merge them first")
    vision = _native_vision_from_chat(chat_config.get("vision_config") or {})
    image_size = fields["force_image_size"] or vision["image_size"][0]
    native = {
        "architectures": ["InternVLForConditionalGeneration"],
        "model_type": "internvl",
        "vision_config": vision,
        "text_config": _native_text_from_chat(chat_config.get("llm_config") or {}, llm_arch),
        "image_token_id": int(image_token_id),
        "image_seq_length": _image_seq_length(image_size, vision["patch_size"][0], fields["downsample_ratio"]),
        "downsample_ratio": fields["downsample_ratio"],
        "projector_hidden_act": "gelu",  # mlp1[2] is nn.GELU() (exact erf form), as is ACT2FN["gelu"]
        "vision_feature_layer": fields["select_layer"],
        "vision_feature_select_strategy": "default",  # the chat model always drops the CLS token
        "tie_word_embeddings": False,
    }
    if chat_config.get("torch_dtype") is not None:
        native["dtype"] = chat_config["torch_dtype"]
    return native


def _canonical_native(hf_config: Mapping) -> dict:
    """Fill every field of a native config dict by passing it through ``transformers.InternVLConfig``."""
    from transformers import InternVLConfig

    try:
        plain = json.loads(json.dumps(dict(hf_config), default=lambda o: str(o).removeprefix("torch.")))
        return InternVLConfig(**plain).to_dict()
    except (TypeError, ValueError) as error:
        raise LayoutError(f"invalid transformers-native InternVL config: {str(error).splitlines()[0]}") from error


def _check_training_fields(training_fields: Mapping, native: Mapping) -> dict:
    unknown = sorted(set(training_fields) - set(TRAINING_FIELDS))
    if unknown:
        raise LayoutError(f"unknown training field {unknown[0]!r}; expected {', '.join(TRAINING_FIELDS)}")
    missing = [name for name in _REQUIRED_TRAINING_FIELDS if name not in training_fields]
    if missing:
        raise LayoutError(f"training field {missing[0]!r} is missing (it must come from the run, not the base)")
    if training_fields["ps_version"] != "v2":
        raise LayoutError(f"ps_version={training_fields['ps_version']!r}: the native model uses the 'v2' pixel shuffle")
    fixed = {"downsample_ratio": native["downsample_ratio"], "select_layer": native["vision_feature_layer"]}
    for name, value in fixed.items():
        if name in training_fields and training_fields[name] != value:
            raise LayoutError(
                f"training field {name}={training_fields[name]!r} disagrees with the model config ({value!r})")
    return {**dict(training_fields), **fixed}


def native_config_to_chat(
    hf_config: Mapping,
    *,
    llm_arch: str,
    training_fields: Mapping,
    base_config: Mapping | None = None,
) -> dict:
    """transformers ``InternVLConfig`` dict -> InternVL-chat config.json dict.

    Args:
        hf_config: the native config (as ``InternVLConfig.to_dict()`` or config.json).
        llm_arch: ``'internlm2'`` (native Llama written as InternLM2), ``'qwen2'`` or ``'llama'``.
        training_fields: the run's values of :data:`TRAINING_FIELDS` (``downsample_ratio`` and
            ``select_layer`` may be left out; they come from ``hf_config``). Always written from here.
        base_config: optional original chat config.json; fields this function does not derive
            (e.g. ``use_flash_attn``, ``pad2square``, ``_name_or_path``) are carried over from it.
            Everything derived from ``hf_config`` or ``training_fields`` wins, and so do the values
            vlft trains with: ``drop_path_rate=0.0``, ``use_backbone_lora=use_llm_lora=0`` (merged),
            ``tie_word_embeddings=False`` and InternLM2's ``attn_implementation='eager'`` (the remote
            code switches it to flash attention at load time when asked).

    Native fields with no chat equivalent must hold the value the chat model implies
    (``use_mean_pooling=True``, ``use_mask_token=False``, ``num_channels=3``, a square image size,
    ``projector_hidden_act='gelu'``, ``vision_feature_select_strategy='default'``, ``mlp_bias=False`` for
    InternLM2), else LayoutError. ``hidden_dropout_prob`` is not carried (InternViT has no such dropout).
    """
    _check_arch(llm_arch)
    native = _canonical_native(hf_config)
    fields = _check_training_fields(training_fields, native)
    if native["projector_hidden_act"] != "gelu":
        raise LayoutError(f"projector_hidden_act={native['projector_hidden_act']!r}: mlp1 uses GELU")
    if native["vision_feature_select_strategy"] != "default":
        raise LayoutError("vision_feature_select_strategy must be 'default': the chat model always drops the CLS token")
    if not isinstance(native["vision_feature_layer"], int):
        raise LayoutError(
            f"vision_feature_layer={native['vision_feature_layer']!r}: the chat model takes a single layer")

    vision = _chat_vision_from_native(native["vision_config"])
    image_size = fields["force_image_size"] or vision["image_size"]
    expected_tokens = _image_seq_length(image_size, vision["patch_size"], native["downsample_ratio"])
    if native["image_seq_length"] != expected_tokens:
        raise LayoutError(
            f"image_seq_length={native['image_seq_length']} but the chat model gives {expected_tokens} tokens per "
            f"tile (image size {image_size}, patch {vision['patch_size']}, downsample {native['downsample_ratio']}); "
            "fix one of them"
        )
    dtype = native.get("dtype")
    dtype = dtype if dtype is None or isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    llm = _chat_llm_from_native(native["text_config"], llm_arch, dtype)

    base = dict(base_config or {})
    base_llm = dict(base.get("llm_config") or {})
    if base_llm and (base_llm.get("architectures") or [None])[0] != llm["architectures"][0]:
        raise LayoutError(
            f"base_config llm_config.architectures={base_llm.get('architectures')} does not match llm_arch={llm_arch!r}"
        )
    base_llm.pop("rope_parameters", None)  # we write the transformers-4 rope_theta/rope_scaling form
    chat = {**{k: v for k, v in _CHAT_DEFAULTS.items() if k not in TRAINING_FIELDS}, **base}
    chat.update(
        {
            "architectures": ["InternVLChatModel"],
            "model_type": "internvl_chat",
            "auto_map": dict(_CHAT_AUTO_MAP),
            "vision_config": {**dict(base.get("vision_config") or {}), **vision},
            "llm_config": {**base_llm, **llm},
            "use_backbone_lora": 0,  # the weights are merged; non-zero would re-wrap them with fresh LoRA
            "use_llm_lora": 0,
            **{name: fields[name] for name in TRAINING_FIELDS},
        }
    )
    if dtype is not None:
        chat["torch_dtype"] = dtype
    return chat


# --------------------------------------------------------------------------------------------------
# Weight names a config implies.


def _native_names(native: Mapping) -> list[str]:
    """Every native key for a canonical (fully filled) config, in save order; lm_head last."""
    vision, text = native["vision_config"], native["text_config"]
    names = [
        "vision_tower.embeddings.cls_token",
        "vision_tower.embeddings.position_embeddings",
        "vision_tower.embeddings.patch_embeddings.projection.weight",
        "vision_tower.embeddings.patch_embeddings.projection.bias",
    ]
    norm_params = ("weight", "bias") if vision["norm_type"] == "layer_norm" else ("weight",)
    for i in range(vision["num_hidden_layers"]):
        p = f"{_VIT_NATIVE_LAYERS}{i}."
        names += [p + "lambda_1", p + "lambda_2"]
        qkv_params = ("weight", "bias") if vision["attention_bias"] else ("weight",)
        names += [f"{p}attention.{proj}.{param}" for proj in ("q_proj", "k_proj", "v_proj") for param in qkv_params]
        names += [p + "attention.projection_layer.weight", p + "attention.projection_layer.bias"]
        if vision["use_qk_norm"]:
            names += [p + "attention.q_norm.weight", p + "attention.k_norm.weight"]
        names += [f"{p}mlp.{fc}.{param}" for fc in ("fc1", "fc2") for param in ("weight", "bias")]
        names += [f"{p}{norm}.{param}" for norm in ("layernorm_before", "layernorm_after") for param in norm_params]
    names += [f"multi_modal_projector.{module}.{param}"
              for module in ("layer_norm", "linear_1", "linear_2") for param in ("weight", "bias")]

    qwen2 = text["model_type"] == "qwen2"
    attn_bias = ("q", "k", "v") if qwen2 else (("q", "k", "v", "o") if text.get("attention_bias") else ())
    mlp_bias = not qwen2 and text.get("mlp_bias")
    names.append(_EMBED)
    for i in range(text["num_hidden_layers"]):
        p = f"{_LLM_LAYERS}{i}."
        names += [f"{p}self_attn.{x}_proj.weight" for x in "qkvo"]
        names += [f"{p}self_attn.{x}_proj.bias" for x in attn_bias]
        names += [f"{p}mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
        if mlp_bias:
            names += [f"{p}mlp.{x}_proj.bias" for x in ("gate", "up", "down")]
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
    names += ["language_model.model.norm.weight", _LM_HEAD]
    return names


def native_weight_names(hf_config: Mapping) -> list[str]:
    """Every key ``InternVLForConditionalGeneration.save_pretrained`` writes for this config (untied head)."""
    return _native_names(_canonical_native(hf_config))


@dataclass(frozen=True)
class _Plan:
    """What the weight converters need to know about one model."""

    llm_arch: str
    expected: frozenset[str]  # native keys
    tied: bool  # the input may leave out the LM head; it is then copied from the embeddings
    vit_hidden: int
    num_positions: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, native: Mapping, llm_arch: str, tied: bool) -> _Plan:
        vision, text = native["vision_config"], native["text_config"]
        grid = _square(vision["image_size"], "image_size") // _square(vision["patch_size"], "patch_size")
        return cls(
            llm_arch=llm_arch,
            expected=frozenset(_native_names(native)),
            tied=tied,
            vit_hidden=vision["hidden_size"],
            num_positions=grid * grid + 1,
            num_heads=text["num_attention_heads"],
            num_kv_heads=text.get("num_key_value_heads") or text["num_attention_heads"],
            head_dim=text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"],
        )

    @property
    def heads(self) -> dict[str, int]:
        return {"num_heads": self.num_heads, "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim}

    def check_shape(self, native_key: str, tensor: Tensor, source: str) -> None:
        """Catch a config that does not describe the weights before a reshape scrambles them."""
        rows = None
        if native_key == "vision_tower.embeddings.position_embeddings":
            if tensor.dim() != 3 or tensor.shape[1] != self.num_positions:
                raise LayoutError(f"{source} has shape {tuple(tensor.shape)}; the config's image and patch size "
                                  f"need {self.num_positions} positions")
            return
        if native_key.startswith(_VIT_NATIVE_LAYERS) and native_key.split(".")[-2] in ("q_proj", "k_proj", "v_proj"):
            rows = self.vit_hidden
        elif native_key.startswith(_LLM_LAYERS) and native_key.split(".")[-2] in ("q_proj", "k_proj", "v_proj"):
            rows = (self.num_heads if native_key.split(".")[-2] == "q_proj" else self.num_kv_heads) * self.head_dim
        if rows is not None and tensor.shape[0] != rows:
            raise LayoutError(f"{source} has {tensor.shape[0]} rows where the config needs {rows}")

    def check_complete(self, seen: set[str], *, chat_input: bool) -> None:
        """Raise naming the first absent input key (in the input's own layout)."""
        required = self.expected - {_LM_HEAD} if self.tied else self.expected
        absent = sorted(required - seen)
        if absent:
            first = _native_to_chat_slot(absent[0], self.llm_arch)[0] if chat_input else absent[0]
            more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
            layout = "InternVL-chat" if chat_input else "transformers-native InternVL"
            raise LayoutError(f"{layout} weights lack {first!r}{more}")


def _chat_plan(chat_config: Mapping) -> _Plan:
    llm_arch = llm_arch_of_chat_config(chat_config)
    native = chat_config_to_native(chat_config, image_token_id=0)  # the id does not affect weights
    tied = bool((chat_config.get("llm_config") or {}).get("tie_word_embeddings", False))
    return _Plan.of(native, llm_arch, tied)


def _native_plan(hf_config: Mapping, llm_arch: str) -> _Plan:
    _check_arch(llm_arch)
    native = _canonical_native(hf_config)
    _chat_llm_from_native(native["text_config"], llm_arch, None)  # validates arch against model_type
    tied = bool(native.get("tie_word_embeddings") or native["text_config"].get("tie_word_embeddings"))
    return _Plan.of(native, llm_arch, tied)


# --------------------------------------------------------------------------------------------------
# Weights: streaming converters and their dict wrappers.


def iter_chat_to_native(items: Iterable[tuple[str, Tensor]], chat_config: Mapping) -> Iterator[tuple[str, Tensor]]:
    """Stream InternVL-chat (key, tensor) pairs as native pairs. Fused qkv/wqkv are split on the spot.

    A tied LM head (``llm_config.tie_word_embeddings``) is yielded as ``language_model.lm_head.weight``
    from the embeddings. Raises LayoutError on an unknown, duplicate, misshapen or missing key.
    """
    plan = _chat_plan(chat_config)
    seen: set[str] = set()
    embed: Tensor | None = None
    for key, tensor in items:
        if key.endswith(_IGNORED_CHAT_SUFFIXES):
            continue
        names = chat_key_to_native(key, llm_arch=plan.llm_arch)
        for name in names:
            if name not in plan.expected:
                raise LayoutError(f"unknown key {key!r} in InternVL-chat weights: the config has no place for it")
            if name in seen:
                raise LayoutError(f"duplicate key {key!r} in InternVL-chat weights")
        if len(names) == 1:
            pieces: tuple[Tensor, ...] = (tensor,)
        elif plan.llm_arch == "internlm2" and names[0].startswith(_LLM_LAYERS):
            rows = (plan.num_heads + 2 * plan.num_kv_heads) * plan.head_dim
            if tensor.shape[0] != rows:
                raise LayoutError(f"{key!r} has {tensor.shape[0]} rows where the config needs {rows}")
            pieces = ungroup_wqkv(tensor, **plan.heads)
        else:
            if tensor.shape[0] != 3 * plan.vit_hidden:
                raise LayoutError(f"{key!r} has {tensor.shape[0]} rows where the config needs {3 * plan.vit_hidden}")
            pieces = split_vision_qkv(tensor)
        for name, piece in zip(names, pieces):
            plan.check_shape(name, piece, repr(key))
            seen.add(name)
            if name == _EMBED:
                embed = piece
            yield name, piece
    if plan.tied and _LM_HEAD not in seen and embed is not None:
        seen.add(_LM_HEAD)
        yield _LM_HEAD, _fresh(embed)
    plan.check_complete(seen, chat_input=True)


def iter_native_to_chat(
    items: Iterable[tuple[str, Tensor]], hf_config: Mapping, *, llm_arch: str
) -> Iterator[tuple[str, Tensor]]:
    """Stream native (key, tensor) pairs as InternVL-chat pairs.

    q/k/v of one attention layer are buffered until all three arrived, then fused (InternViT ``attn.qkv``;
    InternLM2 ``wqkv`` grouped per KV head). A tied model without ``lm_head`` gets ``output`` /
    ``lm_head`` from the embeddings. Raises LayoutError on an unknown, duplicate, misshapen or missing key.
    """
    plan = _native_plan(hf_config, llm_arch)
    seen: set[str] = set()
    pending: dict[str, dict[int, Tensor]] = {}  # chat key -> {slot: tensor}, one entry per layer in flight
    embed: Tensor | None = None
    for key, tensor in items:
        if key not in plan.expected:
            raise LayoutError(
                f"unknown key {key!r} in transformers-native InternVL weights: the config has no place for it")
        if key in seen:
            raise LayoutError(f"duplicate key {key!r} in transformers-native InternVL weights")
        plan.check_shape(key, tensor, repr(key))
        seen.add(key)
        if key == _EMBED and plan.tied and _LM_HEAD not in seen:  # held only while the head may still be missing
            embed = tensor
        elif key == _LM_HEAD:
            embed = None
        chat_key, slot = _native_to_chat_slot(key, llm_arch)
        if slot is None:
            yield chat_key, tensor
            continue
        parts = pending.setdefault(chat_key, {})
        parts[slot] = tensor
        if len(parts) < 3:
            continue
        del pending[chat_key]
        q, k, v = parts[0], parts[1], parts[2]
        if llm_arch == "internlm2" and chat_key.startswith(_LLM_LAYERS):
            yield chat_key, group_wqkv(q, k, v, **plan.heads)
        else:
            yield chat_key, fuse_vision_qkv(q, k, v)
    if plan.tied and _LM_HEAD not in seen and embed is not None:
        seen.add(_LM_HEAD)
        yield _native_to_chat_slot(_LM_HEAD, llm_arch)[0], _fresh(embed)
    plan.check_complete(seen, chat_input=False)


def internvl_chat_to_native(
    state: Mapping[str, Tensor], chat_config: Mapping, *, image_token_id: int
) -> tuple[dict[str, Tensor], dict]:
    """Original-layout weights + its config.json dict -> (native weights, ``InternVLConfig`` dict).

    ``InternVLForConditionalGeneration(InternVLConfig(**config))`` loads the weights with no missing or
    unexpected keys. ``image_token_id`` is the tokenizer's ``<IMG_CONTEXT>`` id.
    """
    config = chat_config_to_native(chat_config, image_token_id=image_token_id)
    return dict(iter_chat_to_native(state.items(), chat_config)), config


def native_to_internvl_chat(
    state: Mapping[str, Tensor],
    hf_config: Mapping,
    *,
    llm_arch: str,
    training_fields: Mapping,
    base_config: Mapping | None = None,
) -> tuple[dict[str, Tensor], dict]:
    """Native weights + ``InternVLConfig`` dict -> (original-layout weights, InternVL-chat config.json dict).

    See :func:`native_config_to_chat` for ``llm_arch``, ``training_fields`` and ``base_config``.
    """
    config = native_config_to_chat(hf_config, llm_arch=llm_arch, training_fields=training_fields,
                                   base_config=base_config)
    return dict(iter_native_to_chat(state.items(), hf_config, llm_arch=llm_arch)), config


# --------------------------------------------------------------------------------------------------
# Test checkpoints.


def remote_code_files(llm_arch: str) -> tuple[str, ...]:
    """The trust_remote_code files an InternVL-chat checkpoint directory ships for this LLM."""
    _check_arch(llm_arch)
    files = (
        "configuration_intern_vit.py",
        "configuration_internvl_chat.py",
        "conversation.py",
        "modeling_intern_vit.py",
        "modeling_internvl_chat.py",
    )
    if llm_arch == "internlm2":
        files += ("configuration_internlm2.py", "modeling_internlm2.py")
    return files


def write_tiny_internvl_chat_checkpoint(
    native: str | Path | tuple[Mapping[str, Tensor], Mapping],
    out_dir: str | Path,
    *,
    llm_arch: str,
    template: str | None = None,
    training_fields: Mapping | None = None,
) -> Path:
    """Write a native model as an InternVL-chat checkpoint directory, for tests and the demo.

    Args:
        native: a transformers-native InternVL directory (``*.safetensors`` + ``config.json``) or a
            ``(state, hf_config)`` pair.
        out_dir: created if needed; gets ``model.safetensors``, ``config.json`` and placeholder
            remote-code files (one comment line each: they cannot run; a real export copies the base's).
        llm_arch: ``'internlm2'``, ``'qwen2'`` or ``'llama'``.
        template: the chat config's ``template`` (InternVL's conversation template name).
        training_fields: overrides of the defaults, which are those of released InternVL2/2.5
            checkpoints (dynamic tiling 1..12 with a thumbnail, ``ps_version='v2'``, tiles of the vision
            encoder's image size).
    """
    from safetensors.torch import load_file, save_file

    if isinstance(native, (str, Path)):
        native_dir = Path(native)
        hf_config = json.loads((native_dir / "config.json").read_text())
        state: dict[str, Tensor] = {}
        for shard in sorted(native_dir.glob("*.safetensors")):
            state.update(load_file(str(shard)))
    else:
        state, hf_config = native
    vision = _canonical_native(hf_config)["vision_config"]
    fields = {
        "template": template,
        "ps_version": "v2",
        "force_image_size": _square(vision["image_size"], "image_size"),
        "dynamic_image_size": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "use_thumbnail": True,
        **dict(training_fields or {}),
    }
    weights, config = native_to_internvl_chat(state, hf_config, llm_arch=llm_arch, training_fields=fields)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in remote_code_files(llm_arch):
        (out / name).write_text(f"# Placeholder for {name}: a vlft test checkpoint ships no InternVL remote code.\n")
    return out
