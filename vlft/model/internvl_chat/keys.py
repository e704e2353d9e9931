"""Key names of the two layouts, and the native parameters (names and shapes) a config implies.

- *native* (vlft's own, and what ``transformers.InternVLForConditionalGeneration.save_pretrained`` writes):
  ``vision_tower.*`` with split q/k/v, ``multi_modal_projector.{layer_norm,linear_1,linear_2}``,
  ``language_model.model.*`` and ``language_model.lm_head.weight`` in the transformers LLM's names.
- *chat* (``InternVLChatModel``): ``vision_model.*`` with a fused ``attn.qkv``, ``mlp1.{0,1,3}``
  (``Sequential(LayerNorm, Linear, GELU, Linear)``), and ``language_model.*`` in the LLM's own names
  (its registry entry, :mod:`vlft.model.internvl_chat.llms`).

The native parameters are read from meta-device models of the transformers classes, never listed by hand.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache

from .errors import LayoutError
from .llms import LLM_LAYERS, ChatLLM, llm_entry
from .tensors import FusedRule, vision_qkv_rule

VIT_CHAT_LAYERS = "vision_model.encoder.layers."
VIT_NATIVE_LAYERS = "vision_tower.encoder.layer."
EMBED = "language_model.model.embed_tokens.weight"
LM_HEAD = "language_model.lm_head.weight"
# Non-persistent buffers that some older chat checkpoints saved; they are recomputed, never loaded.
IGNORED_CHAT_SUFFIXES = (".rotary_emb.inv_freq",)

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
_VIT_FUSED = {f"attn.qkv.{p}": vision_qkv_rule("attention.", p) for p in ("weight", "bias")}


def _invert(table: Mapping[str, str]) -> dict[str, str]:
    return {native: chat for chat, native in table.items()}


def _invert_fused(table: Mapping[str, FusedRule]) -> dict[str, tuple[str, int]]:
    return {native: (chat, slot) for chat, rule in table.items() for slot, native in enumerate(rule.parts)}


_FLAT_REV = _invert(_FLAT)
_VIT_LAYER_REV = _invert(_VIT_LAYER)
_VIT_FUSED_REV = _invert_fused(_VIT_FUSED)


@lru_cache(maxsize=None)
def _reverse_tables(name: str) -> tuple[dict[str, str], dict[str, str], dict[str, tuple[str, int]]]:
    entry = llm_entry(name)
    return _invert(entry.flat), _invert(entry.layer), _invert_fused(entry.fused)


def _split_layer(key: str, prefix: str) -> tuple[str, str] | None:
    """'<prefix>12.attn.proj.weight' -> ('12', 'attn.proj.weight'); None if key is not a layer key."""
    if not key.startswith(prefix):
        return None
    index, _, suffix = key[len(prefix):].partition(".")
    return (index, suffix) if index.isdigit() and suffix else None


def _layer_names(key: str, layers: str, target_layers: str, renames: Mapping[str, str],
                 fused: Mapping[str, FusedRule]) -> tuple[str, ...] | None:
    """A per-layer chat key's native name(s): one through `renames`, the parts of a fused tensor through
    `fused`; None when the key is no layer key of `layers` or its suffix is in neither table."""
    if (parts := _split_layer(key, layers)) is None:
        return None
    index, suffix = parts
    prefix = f"{target_layers}{index}."
    if suffix in renames:
        return (prefix + renames[suffix],)
    if suffix in fused:
        return tuple(prefix + name for name in fused[suffix].parts)
    return None


def _layer_slot(key: str, layers: str, target_layers: str, renames: Mapping[str, str],
                fused: Mapping[str, tuple[str, int]]) -> tuple[str, int | None] | None:
    """The reverse of _layer_names for one key: (chat name, slot in the fused tensor or None), or None."""
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


def fused_rule(chat_key: str, entry: ChatLLM) -> FusedRule | None:
    """The rule of a fused chat key (vision ``attn.qkv`` or the LLM's), or None."""
    for layers, table in ((VIT_CHAT_LAYERS, _VIT_FUSED), (LLM_LAYERS, entry.fused)):
        if (parts := _split_layer(chat_key, layers)) is not None and parts[1] in table:
            return table[parts[1]]
    return None


def chat_key_to_native(key: str, *, llm_arch: str) -> tuple[str, ...]:
    """Native key(s) that one InternVL-chat weight becomes: the parts of a fused tensor, else one.

    >>> chat_key_to_native("vision_model.encoder.layers.3.ls1", llm_arch="qwen2")
    ('vision_tower.encoder.layer.3.lambda_1',)
    >>> chat_key_to_native("language_model.model.layers.0.attention.wqkv.weight", llm_arch="internlm2")[1]
    'language_model.model.layers.0.self_attn.k_proj.weight'

    Raises LayoutError when the name has no place in the layout. (Whether the key belongs to a given
    config, e.g. a layer index in range, is checked by the converters.)
    """
    entry = llm_entry(llm_arch)
    if key in _FLAT:
        return (_FLAT[key],)
    names = _layer_names(key, VIT_CHAT_LAYERS, VIT_NATIVE_LAYERS, _VIT_LAYER, _VIT_FUSED)
    if names is None and key.startswith("language_model."):
        if key in entry.flat:
            return (entry.flat[key],)
        names = _layer_names(key, LLM_LAYERS, LLM_LAYERS, entry.layer, entry.fused)
        if names is None and not entry.renames_all:  # already in transformers names
            return (key,)
    if names is not None:
        return names
    raise LayoutError(f"unknown key {key!r} in InternVL-chat weights (llm_arch={llm_arch})")


def release_vision_key_to_native(key: str) -> tuple[str, ...]:
    """``InternVLVisionModel`` key(s) of one weight of OpenGVLab's InternViT release (``InternVisionModel``:
    the chat layout's ``vision_model.*`` names without the prefix); a fused ``attn.qkv`` gives q, k, v.

    >>> release_vision_key_to_native("encoder.layers.0.attn.qkv.weight")[0]
    'encoder.layer.0.attention.q_proj.weight'
    """
    chat_key = "vision_model." + key
    names = _FLAT.get(chat_key)
    names = (names,) if names is not None else _layer_names(chat_key, VIT_CHAT_LAYERS, VIT_NATIVE_LAYERS,
                                                              _VIT_LAYER, _VIT_FUSED)
    if names is None or not names[0].startswith("vision_tower."):
        raise LayoutError(f"unknown key {key!r} in InternViT weights")
    return tuple(name.removeprefix("vision_tower.") for name in names)


def native_to_chat_slot(key: str, llm_arch: str) -> tuple[str, int | None]:
    """(chat key, slot in the fused tensor or None) for one native key."""
    entry = llm_entry(llm_arch)
    if key in _FLAT_REV:
        return _FLAT_REV[key], None
    slot = _layer_slot(key, VIT_NATIVE_LAYERS, VIT_CHAT_LAYERS, _VIT_LAYER_REV, _VIT_FUSED_REV)
    if slot is None and key.startswith("language_model."):
        flat, layer, fused = _reverse_tables(entry.name)
        if key in flat:
            return flat[key], None
        slot = _layer_slot(key, LLM_LAYERS, LLM_LAYERS, layer, fused)
        if slot is None and not entry.renames_all:
            return key, None
    if slot is not None:
        return slot
    raise LayoutError(f"unknown key {key!r} in transformers-native InternVL weights (llm_arch={llm_arch})")


def native_key_to_chat(key: str, *, llm_arch: str) -> str:
    """The chat key a native weight goes into (the fused one for q/k/v parts).

    >>> native_key_to_chat("multi_modal_projector.linear_1.weight", llm_arch="qwen2")
    'mlp1.1.weight'
    """
    return native_to_chat_slot(key, llm_arch)[0]


# --------------------------------------------------------------------------------------------------
# The native parameters a config implies, from meta-device models of the transformers classes.


def native_shapes(native: Mapping) -> dict[str, tuple[int, ...]]:
    """{native key: shape} for a canonical native config, in save order (vision, projector, LLM; lm_head last).

    The LM head is always listed: the native config the chat layout maps to is untied.
    """
    return dict(_native_shapes(json.dumps(native, sort_keys=True, default=str)))


@lru_cache(maxsize=16)
def _native_shapes(native_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    import torch
    from transformers import AutoModelForCausalLM, InternVLConfig
    from transformers.models.internvl.modeling_internvl import InternVLMultiModalProjector, InternVLVisionModel

    native = json.loads(native_json)
    config = InternVLConfig(**{**native, "text_config": {**native["text_config"], "tie_word_embeddings": False}})
    with torch.device("meta"):
        parts = (("vision_tower.", InternVLVisionModel(config.vision_config)),
                 ("multi_modal_projector.", InternVLMultiModalProjector(config)),
                 ("language_model.", AutoModelForCausalLM.from_config(config.text_config)))
    # state_dict: what save_pretrained writes (parameters and persistent buffers), tied entries included
    return tuple((prefix + name, tuple(tensor.shape)) for prefix, module in parts
                 for name, tensor in module.state_dict().items())
