"""The LLMs of the original InternVL-chat layout: one registry entry per ``llm_config.architectures[0]``.

An entry says how that LLM's ``llm_config`` maps to the transformers text config the native layout loads
it as, which of its chat key names differ from transformers' (renames and fused tensors), the InternVL
conversation template its released checkpoints use, and the remote-code files a checkpoint ships for it.
Which parameters exist is not listed here: vlft reads them from a meta-device model of the transformers
class (:mod:`vlft.model.internvl_chat.keys`).

LLMs that InternVL runs through transformers' own class (Qwen2, Qwen3, Llama, Phi-3) keep transformers'
key names, so their entry is one :func:`transformers_llm` call. Phi-3 keeps ``qkv_proj`` and
``gate_up_proj`` fused in transformers too, so it needs no fused rule. InternLM2 is remote code only: it
loads as Llama, with renamed keys and a grouped ``wqkv``.

Config defaults of InternLM2 come from ``configuration_internlm2.py`` (``bias=True``, ``rope_theta=10000``,
``rope_scaling={'type', 'factor'}``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

from .errors import LayoutError
from .tensors import FusedRule, grouped_qkv_rule

LLM_LAYERS = "language_model.model.layers."  # the same prefix in both layouts


@dataclass(frozen=True)
class ChatLLM:
    """One LLM architecture of the InternVL-chat layout.

    Key tables map chat names to native names; the converters derive the reverse, so they cannot drift.
    """

    name: str                # vlft's llm_arch, recorded with exports
    architecture: str        # llm_config.architectures[0] in the chat config.json
    model_type: str          # the transformers text_config.model_type it loads as
    default_template: str    # the InternVL conversation template its released checkpoints name
    text_from_chat: Callable[[Mapping], dict]  # llm_config -> native text_config dict
    chat_from_text: Callable[[Mapping], dict]  # canonical native text_config -> llm_config (no dtype)
    flat: Mapping[str, str] = field(default_factory=dict)          # whole chat key -> native key
    layer: Mapping[str, str] = field(default_factory=dict)         # per-layer chat suffix -> native suffix
    fused: Mapping[str, FusedRule] = field(default_factory=dict)   # per-layer chat suffix -> its parts
    # True: every LLM key goes through the tables (a chat name that is a transformers name is unknown);
    # False: keys not in the tables are already transformers' names.
    renames_all: bool = False
    remote_code: tuple[str, ...] = ()  # LLM files an InternVL-chat checkpoint ships next to InternVL's


# --------------------------------------------------------------------------------------------------
# RoPE: chat configs hold transformers-4's rope_theta + rope_scaling; transformers 5 has rope_parameters.


def rope_from_legacy(rope_theta: float, rope_scaling: Mapping | None, aliases: Mapping[str, str] = {}) -> dict:
    """transformers-4 ``rope_theta`` + ``rope_scaling`` -> transformers-5 ``rope_parameters``."""
    if not rope_scaling:
        return {"rope_type": "default", "rope_theta": rope_theta}
    params = {k: v for k, v in rope_scaling.items() if k not in ("type", "rope_type")}
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
    return {"rope_type": aliases.get(rope_type, rope_type), **params, "rope_theta": rope_theta}


def rope_to_legacy(rope_parameters: Mapping, *, two_field: bool = False,
                   chat_types: Mapping[str, str] = {}) -> tuple[float, dict | None]:
    """transformers-5 ``rope_parameters`` -> (``rope_theta``, ``rope_scaling``) as a chat config writes them.

    ``two_field``: the LLM's remote code reads only ``{'type', 'factor'}`` (InternLM2). ``chat_types``: names
    the remote code knows a rope type by (Phi-3's ``'su'`` for transformers' ``'longrope'``).
    """
    rope_type = rope_parameters.get("rope_type", rope_parameters.get("type", "default"))
    theta = rope_parameters["rope_theta"]
    params = {k: v for k, v in rope_parameters.items() if k not in ("type", "rope_type", "rope_theta")}
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise LayoutError(f"rope_parameters {dict(rope_parameters)}: a partial rotary factor has no InternVL-chat "
                          "equivalent")
    params.pop("partial_rotary_factor", None)  # transformers 5 writes the 1.0 default out; the legacy form leaves it
    if rope_type == "default":
        return theta, None
    if set(params) == {"factor"} and rope_type in ("linear", "dynamic"):
        # The two-field form is what InternLM2Config (and transformers < 4.45) accept.
        return theta, {"type": rope_type, "factor": params["factor"]}
    if two_field:
        raise LayoutError(f"rope_parameters {dict(rope_parameters)} has no InternLM2 equivalent (linear/dynamic only)")
    if rope_type in chat_types:
        return theta, {"type": chat_types[rope_type], **params}
    return theta, {"rope_type": rope_type, **params}


# --------------------------------------------------------------------------------------------------
# LLMs that InternVL loads through transformers' own classes: the same key names, config fields copied.


def _config_class(model_type: str):
    import transformers  # heavy; only the config mapping needs it

    return transformers.CONFIG_MAPPING[model_type]


def _own_fields(model_type: str) -> tuple[str, ...]:
    """The fields a transformers text config class declares itself (not PreTrainedConfig's)."""
    return tuple(_config_class(model_type).__annotations__)


def _text_from_transformers_llm(model_type: str, chat_types: Mapping[str, str], llm_config: Mapping) -> dict:
    aliases = {chat: ours for ours, chat in chat_types.items()}
    text = {"model_type": model_type}
    text.update({k: llm_config[k] for k in _own_fields(model_type) if k in llm_config})
    if not llm_config.get("rope_parameters"):
        text["rope_parameters"] = rope_from_legacy(llm_config.get("rope_theta", 10000.0),
                                                   llm_config.get("rope_scaling"), aliases)
    # The config class fills the rope fields it implies (Phi-3's partial_rotary_factor), as save_pretrained does.
    fields = {k: v for k, v in text.items() if k != "model_type"}
    text["rope_parameters"] = dict(_config_class(model_type)(**fields).rope_parameters)
    text["tie_word_embeddings"] = False  # a tied head is written out as lm_head (see the weight converters)
    return text


def _transformers_llm_from_text(architecture: str, model_type: str, chat_types: Mapping[str, str],
                                text: Mapping) -> dict:
    fields = {k: text[k] for k in _own_fields(model_type) if k in text and k != "rope_parameters"}
    rope_theta, rope_scaling = rope_to_legacy(text["rope_parameters"], chat_types=chat_types)
    if rope_scaling:  # transformers 5 copies some config fields into rope_parameters (Phi-3's original length)
        rope_scaling = {k: v for k, v in rope_scaling.items() if k not in fields or fields[k] != v}
    return {"architectures": [architecture], "model_type": model_type, **fields,
            "rope_theta": rope_theta, "rope_scaling": rope_scaling}


def transformers_llm(name: str, architecture: str, *, model_type: str | None = None, default_template: str,
                     chat_rope_types: Mapping[str, str] | None = None, remote_code: tuple[str, ...] = ()) -> ChatLLM:
    """The entry of an LLM whose chat keys are transformers' names (the chat model builds it from llm_config)."""
    model_type = model_type or name
    chat_types = dict(chat_rope_types or {})
    return ChatLLM(name=name, architecture=architecture, model_type=model_type, default_template=default_template,
                   text_from_chat=partial(_text_from_transformers_llm, model_type, chat_types),
                   chat_from_text=partial(_transformers_llm_from_text, architecture, model_type, chat_types),
                   remote_code=remote_code)


# --------------------------------------------------------------------------------------------------
# InternLM2: remote code only, loaded as Llama.

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
_INTERNLM2_AUTO_MAP = {
    "AutoConfig": "configuration_internlm2.InternLM2Config",
    "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
}
_INTERNLM2_COPIED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range",
                     "rms_norm_eps", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id")


def _internlm2_text(llm_config: Mapping) -> dict:
    lc = {**_INTERNLM2_DEFAULTS, **llm_config}
    if lc.get("rope_pos_id_version", "default") not in ("default", None):
        raise LayoutError(f"llm_config.rope_pos_id_version={lc['rope_pos_id_version']!r} has no Llama equivalent")
    return {
        "model_type": "llama",
        **{k: lc[k] for k in _INTERNLM2_COPIED},
        "num_key_value_heads": lc["num_key_value_heads"] or lc["num_attention_heads"],
        "pretraining_tp": 1,
        "tie_word_embeddings": False,
        "rope_parameters": rope_from_legacy(lc["rope_theta"], lc["rope_scaling"]),
        "attention_bias": lc["bias"],  # InternLM2's `bias` covers wqkv and wo, like Llama's attention_bias
        "attention_dropout": 0.0,
        "mlp_bias": False,  # InternLM2's feed_forward has no bias
        "head_dim": lc["hidden_size"] // lc["num_attention_heads"],
    }


def _internlm2_llm(text: Mapping) -> dict:
    if text.get("mlp_bias"):
        raise LayoutError("text_config.mlp_bias=True has no InternLM2 equivalent (its feed_forward has no bias)")
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    if head_dim * text["num_attention_heads"] != text["hidden_size"]:
        raise LayoutError(f"text_config.head_dim={head_dim}: InternLM2 needs hidden_size // num_attention_heads")
    rope_theta, rope_scaling = rope_to_legacy(text["rope_parameters"], two_field=True)
    return {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "auto_map": dict(_INTERNLM2_AUTO_MAP),
        **{k: text[k] for k in _INTERNLM2_COPIED},
        "bias": text["attention_bias"],
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        # The remote code switches to flash attention at load time when asked; eager runs everywhere.
        "attn_implementation": "eager",
    }


INTERNLM2 = ChatLLM(
    name="internlm2",
    architecture="InternLM2ForCausalLM",
    model_type="llama",
    default_template="internlm2-chat",
    text_from_chat=_internlm2_text,
    chat_from_text=_internlm2_llm,
    flat={
        "language_model.model.tok_embeddings.weight": "language_model.model.embed_tokens.weight",
        "language_model.model.norm.weight": "language_model.model.norm.weight",
        "language_model.output.weight": "language_model.lm_head.weight",
    },
    layer={
        "attention.wo.weight": "self_attn.o_proj.weight",
        "attention.wo.bias": "self_attn.o_proj.bias",
        "feed_forward.w1.weight": "mlp.gate_proj.weight",
        "feed_forward.w3.weight": "mlp.up_proj.weight",
        "feed_forward.w2.weight": "mlp.down_proj.weight",
        "attention_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
    },
    fused={f"attention.wqkv.{p}": grouped_qkv_rule("self_attn.", p) for p in ("weight", "bias")},
    renames_all=True,
    remote_code=("configuration_internlm2.py", "modeling_internlm2.py"),
)

# --------------------------------------------------------------------------------------------------
# The registry.

REGISTRY: dict[str, ChatLLM] = {entry.name: entry for entry in (
    INTERNLM2,
    transformers_llm("qwen2", "Qwen2ForCausalLM", default_template="internvl2_5"),   # InternVL2.5 / 3
    transformers_llm("llama", "LlamaForCausalLM", default_template="Hermes-2"),      # InternVL2-Llama3
    transformers_llm("qwen3", "Qwen3ForCausalLM", default_template="internvl2_5"),   # InternVL3.5
    # InternVL2-4B: Phi-3-mini's remote code knows longrope as "su".
    transformers_llm("phi3", "Phi3ForCausalLM", default_template="phi3-chat", chat_rope_types={"longrope": "su"},
                     remote_code=("configuration_phi3.py", "modeling_phi3.py")),
)}
LLM_ARCHS = tuple(REGISTRY)


def llm_entry(llm_arch: str) -> ChatLLM:
    """The registry entry called ``llm_arch`` ('internlm2', 'qwen2', ...)."""
    try:
        return REGISTRY[llm_arch]
    except KeyError:
        raise LayoutError(f"unsupported llm_arch {llm_arch!r}; expected one of {', '.join(LLM_ARCHS)}") from None


def llm_arch_of_chat_config(chat_config: Mapping) -> str:
    """The entry name for ``llm_config.architectures[0]`` of a chat config.json."""
    llm_config = chat_config.get("llm_config") or {}
    architecture = (llm_config.get("architectures") or [None])[0]
    for entry in REGISTRY.values():
        if architecture == entry.architecture:
            return entry.name
    supported = ", ".join(entry.architecture for entry in REGISTRY.values())
    raise LayoutError(f"llm_config.architectures[0]={architecture!r} is not supported; expected one of {supported}")


def llm_arch_of_text_type(model_type: str) -> str | None:
    """The entry whose LLM loads as this transformers model_type under its own name (InternLM2 loads as Llama,
    but a Llama text model is written as Llama), or None."""
    for entry in REGISTRY.values():
        if entry.model_type == model_type and not entry.renames_all:
            return entry.name
    return None
