"""InternVL-chat config.json <-> transformers ``InternVLConfig`` dict.

The LLM part goes through the LLM's registry entry (:mod:`vlft.model.internvl_chat.llms`); this module
holds what every InternVL-chat checkpoint shares: the InternViT vision config, the training fields, and
the fields that must agree between the two.

Facts this relies on: ``configuration_intern_vit.py`` (``qkv_bias=False``, ``qk_normalization=True``,
``norm_type='rms_norm'``, ``initializer_factor=0.1`` is the layer-scale init) and
``configuration_internvl_chat.py`` (``ps_version='v1'``, ``select_layer=-1``, ``max_dynamic_patch=6``).
The chat model drops the CLS token, takes ``hidden_states[select_layer]`` (last hidden state for -1), and
only ``ps_version='v2'`` matches transformers' pixel shuffle ('v1' leaves the token grid transposed).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from vlft.families import INTERNVL

from .errors import LayoutError
from .llms import llm_arch_of_chat_config, llm_entry

# The chat config fields that describe how the model was trained and must be written from the run's
# values. `downsample_ratio` and `select_layer` are also fixed by the native config; when given they
# must agree with it.
REQUIRED_TRAINING_FIELDS = (
    "template",
    "ps_version",
    "force_image_size",
    "dynamic_image_size",
    "min_dynamic_patch",
    "max_dynamic_patch",
    "use_thumbnail",
)
TRAINING_FIELDS = (*REQUIRED_TRAINING_FIELDS, "downsample_ratio", "select_layer")
PS_VERSIONS = ("v1", "v2")

CHAT_DEFAULTS = {  # configuration_internvl_chat.py: InternVLChatConfig.__init__
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
_CHAT_AUTO_MAP = {
    "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
    "AutoModel": "modeling_internvl_chat.InternVLChatModel",
    "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
}
# Native config fields the chat layout has no place for: they must hold the value the chat model implies.
_IMPLIED_NATIVE_VISION = {
    "use_mask_token": False,
    "use_absolute_position_embeddings": True,
    "use_mean_pooling": True,  # InternViT has no final LayerNorm
    "num_channels": 3,  # InternViT's patch Conv2d hard-codes 3 input channels
}
#: The native config key that carries a 'v1' pixel shuffle (transformers has no such field: only vlft's model
#: reads it, and an "-hf" export must refuse it).
PS_VERSION_KEY = "ps_version"


def chat_training_fields(chat_config: Mapping) -> dict:
    """The training/preprocessing fields of a chat config.json, with InternVLChatConfig's defaults."""
    return {name: chat_config.get(name, CHAT_DEFAULTS[name]) for name in TRAINING_FIELDS}


def square(value: Any, name: str) -> int:
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
    image_size, patch_size = square(vc["image_size"], "image_size"), square(vc["patch_size"], "patch_size")
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


def native_vision_from_chat(chat_vision: Mapping) -> dict:
    """An InternViT config (``intern_vit_6b``: a chat config's ``vision_config``, or the config.json of
    OpenGVLab's InternViT release) -> transformers ``InternVLVisionConfig`` dict."""
    return _native_vision_from_chat(chat_vision)


def chat_vision_from_native(vision: Mapping) -> dict:
    """transformers ``InternVLVisionConfig`` dict -> InternViT config (``intern_vit_6b``), as a chat config's
    ``vision_config`` or an InternViT release's config.json holds it."""
    return _chat_vision_from_native(vision)


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
        "image_size": square(vision["image_size"], "image_size"),
        "patch_size": square(vision["patch_size"], "patch_size"),
        "num_channels": 3,
        "attention_dropout": vision["attention_dropout"],
        "dropout": vision["projection_dropout"],
        "drop_path_rate": 0.0,
    }


def _chat_llm_from_native(text: Mapping, llm_arch: str, dtype: str | None) -> dict:
    entry = llm_entry(llm_arch)
    if text["model_type"] != entry.model_type:
        raise LayoutError(f"text_config.model_type={text['model_type']!r} does not fit llm_arch={llm_arch!r} "
                          f"(needs {entry.model_type!r})")
    llm = entry.chat_from_text(text)
    llm["tie_word_embeddings"] = False  # the head is always written out (as output / lm_head)
    if dtype is not None:
        llm["torch_dtype"] = dtype
    return llm


def chat_config_to_native(chat_config: Mapping, *, image_token_id: int, allow_ps_v1: bool = False) -> dict:
    """InternVL-chat config.json dict -> transformers ``InternVLConfig`` dict.

    ``image_token_id`` is the tokenizer's ``<IMG_CONTEXT>`` id (the chat model looks it up at run time,
    so its config does not hold it). A ``ps_version='v1'`` checkpoint (InternVL-Chat-V1-5) is refused
    unless ``allow_ps_v1``: transformers' InternVL has only the 'v2' pixel shuffle. Allowed, the native
    dict carries ``ps_version: 'v1'`` for vlft's own model (``vlft.model.connector``) to read.
    """
    entry = llm_entry(llm_arch_of_chat_config(chat_config))
    fields = {**CHAT_DEFAULTS, **chat_config}
    if fields["ps_version"] not in PS_VERSIONS:
        raise LayoutError(f"ps_version={fields['ps_version']!r}: expected one of {', '.join(PS_VERSIONS)}")
    if fields["ps_version"] == "v1" and not allow_ps_v1:
        raise LayoutError("ps_version='v1': transformers' InternVL implements only the 'v2' pixel shuffle, so this "
                          "checkpoint has no transformers-native equivalent")
    for name in ("use_backbone_lora", "use_llm_lora"):
        if fields[name]:
            raise LayoutError(f"{name}={fields[name]}: the checkpoint holds unmerged LoRA weights; merge them first")
    vision = _native_vision_from_chat(chat_config.get("vision_config") or {})
    image_size = fields["force_image_size"] or vision["image_size"][0]
    native = {
        "architectures": ["InternVLForConditionalGeneration"],
        "model_type": INTERNVL.name,   # the -hf layout's model_type is the family's name
        "vision_config": vision,
        "text_config": entry.text_from_chat(chat_config.get("llm_config") or {}),
        "image_token_id": int(image_token_id),
        "image_seq_length": _image_seq_length(image_size, vision["patch_size"][0], fields["downsample_ratio"]),
        "downsample_ratio": fields["downsample_ratio"],
        "projector_hidden_act": "gelu",  # mlp1[2] is nn.GELU() (exact erf form), as is ACT2FN["gelu"]
        "vision_feature_layer": fields["select_layer"],
        "vision_feature_select_strategy": "default",  # the chat model always drops the CLS token
        "tie_word_embeddings": False,
    }
    if fields["ps_version"] == "v1":
        native[PS_VERSION_KEY] = "v1"
    if chat_config.get("torch_dtype") is not None:
        native["dtype"] = chat_config["torch_dtype"]
    return native


def canonical_native(hf_config: Mapping) -> dict:
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
    missing = [name for name in REQUIRED_TRAINING_FIELDS if name not in training_fields]
    if missing:
        raise LayoutError(f"training field {missing[0]!r} is missing (it must come from the run, not the base)")
    model_ps = native.get(PS_VERSION_KEY, "v2")
    if training_fields["ps_version"] != model_ps:
        raise LayoutError(f"ps_version={training_fields['ps_version']!r}: the model uses the {model_ps!r} "
                          "pixel shuffle")
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
        hf_config: the native config (as ``InternVLConfig.to_dict()`` or config.json); ``ps_version: 'v1'``
            in it (see :func:`chat_config_to_native`) marks vlft's model of a 'v1' checkpoint.
        llm_arch: the LLM registry entry (``'internlm2'``: native Llama written as InternLM2, ``'qwen2'``,
            ``'qwen3'``, ``'llama'``, ``'phi3'``).
        training_fields: the run's values of :data:`TRAINING_FIELDS` (``downsample_ratio`` and
            ``select_layer`` may be left out; they come from ``hf_config``). Always written from here.
        base_config: optional original chat config.json; fields this function does not derive
            (e.g. ``use_flash_attn``, ``pad2square``, ``_name_or_path``) are carried over from it.
            Everything derived from ``hf_config`` or ``training_fields`` wins, and so do the values
            vlft trains with: ``drop_path_rate=0.0``, ``use_backbone_lora=use_llm_lora=0`` (merged),
            ``tie_word_embeddings=False`` at both levels (the head is written out) and InternLM2's
            ``attn_implementation='eager'``.

    Native fields with no chat equivalent must hold the value the chat model implies
    (``use_mean_pooling=True``, ``use_mask_token=False``, ``num_channels=3``, a square image size,
    ``projector_hidden_act='gelu'``, ``vision_feature_select_strategy='default'``, ``mlp_bias=False`` for
    InternLM2), else LayoutError. ``hidden_dropout_prob`` is not carried (InternViT has no such dropout).
    """
    llm_entry(llm_arch)
    native = canonical_native(hf_config)
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
    chat = {**{k: v for k, v in CHAT_DEFAULTS.items() if k not in TRAINING_FIELDS}, **base}
    chat.update(
        {
            "architectures": ["InternVLChatModel"],
            "model_type": "internvl_chat",
            "auto_map": dict(_CHAT_AUTO_MAP),
            "vision_config": {**dict(base.get("vision_config") or {}), **vision},
            "llm_config": {**base_llm, **llm},
            "use_backbone_lora": 0,  # the weights are merged; non-zero would re-wrap them with fresh LoRA
            "use_llm_lora": 0,
            # InternVLChatConfig is a PretrainedConfig, whose tie_word_embeddings defaults to True: say what
            # is stored (an LM head of its own), whatever the base said.
            "tie_word_embeddings": False,
            **{name: fields[name] for name in TRAINING_FIELDS},
        }
    )
    if dtype is not None:
        chat["torch_dtype"] = dtype
    return chat
