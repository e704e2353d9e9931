"""The original InternVL-chat layout (``InternVLChatModel``, trust_remote_code) and the transformers-native one.

Two layouts hold the same model; this package maps weights and configs between them without building the
remote-code model or reading anything from disk (the fixtures only write):

- ``llms``: one registry entry per LLM architecture (InternLM2, Qwen2, Qwen3, Llama, Phi-3): config
  mapping, key renames and fused-tensor rules, default template.
- ``keys``: key names of both layouts; the native parameters a config implies, from meta-device models.
- ``config_map``: chat config.json <-> ``InternVLConfig`` dict, training fields.
- ``tensors``: fused tensors (InternViT ``attn.qkv``, InternLM2's grouped ``wqkv``) split and joined.
- ``streaming``: the weight converters, tensor by tensor.
- ``fixtures``: tiny checkpoint directories for tests.
"""
from __future__ import annotations

from .config_map import (PS_VERSION_KEY, TRAINING_FIELDS, chat_config_to_native, chat_training_fields,
                         chat_vision_from_native, native_config_to_chat, native_vision_from_chat)
from .errors import LayoutError
from .fixtures import remote_code_files, write_tiny_internvl_chat_checkpoint
from .keys import chat_key_to_native, fused_rule, native_key_to_chat, release_vision_key_to_native
from .llms import (LLM_ARCHS, REGISTRY, ChatLLM, llm_arch_of_chat_config, llm_arch_of_text_type, llm_entry,
                   transformers_llm)
from .streaming import (internvl_chat_to_native, iter_chat_to_native, iter_native_to_chat, native_to_internvl_chat,
                        native_weight_names)
from .tensors import FusedRule, Heads, fuse_vision_qkv, group_wqkv, split_vision_qkv, ungroup_wqkv

__all__ = [
    "LLM_ARCHS",
    "PS_VERSION_KEY",
    "REGISTRY",
    "TRAINING_FIELDS",
    "ChatLLM",
    "FusedRule",
    "Heads",
    "LayoutError",
    "chat_config_to_native",
    "chat_key_to_native",
    "chat_vision_from_native",
    "chat_training_fields",
    "fuse_vision_qkv",
    "fused_rule",
    "group_wqkv",
    "internvl_chat_to_native",
    "iter_chat_to_native",
    "iter_native_to_chat",
    "llm_arch_of_chat_config",
    "llm_arch_of_text_type",
    "llm_entry",
    "native_config_to_chat",
    "native_key_to_chat",
    "native_to_internvl_chat",
    "native_vision_from_chat",
    "native_weight_names",
    "release_vision_key_to_native",
    "remote_code_files",
    "split_vision_qkv",
    "transformers_llm",
    "ungroup_wqkv",
    "write_tiny_internvl_chat_checkpoint",
]
