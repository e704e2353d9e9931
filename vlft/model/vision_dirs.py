"""Read a vision-encoder directory (stage 1 from parts): transformers' own towers (CLIP, SigLIP,
InternVLVision) through the Auto classes, and OpenGVLab's InternViT release (``model_type: intern_vit_6b``,
e.g. InternViT-300M-448px) mapped into transformers' ``InternVLVisionModel`` without its remote code.

The release holds the InternVL-chat layout's vision weights without their ``vision_model.`` prefix, so its
config and key names go through the same tables (`vlft.model.internvl_chat`) as a whole chat checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, InternVLVisionConfig, InternVLVisionModel

from vlft.errors import CheckpointError
from vlft.model.internvl_chat import LayoutError, native_vision_from_chat, release_vision_key_to_native, \
    split_vision_qkv
from vlft.model.layouts import read_config, read_safetensors_dir

#: config.json model_type of OpenGVLab's InternViT releases (their remote-code ``InternVisionConfig``).
INTERNVIT_RELEASE_TYPE = "intern_vit_6b"


def is_internvit_release(path: str | Path) -> bool:
    return read_config(path).get("model_type") == INTERNVIT_RELEASE_TYPE


def vision_config(path: str | Path):
    """The transformers config of a vision-encoder directory (an ``InternVLVisionConfig`` for a release)."""
    if not is_internvit_release(path):
        return AutoConfig.from_pretrained(str(path))
    try:
        native = native_vision_from_chat(read_config(path))
    except LayoutError as exc:
        raise CheckpointError(f"{Path(path) / 'config.json'}: {exc}") from None
    native.pop("model_type")
    return InternVLVisionConfig(**native)


def load_vision_encoder(path: str | Path, *, dtype: torch.dtype, attn_implementation: str):
    """The vision tower of a directory, as a transformers model."""
    if not is_internvit_release(path):
        return AutoModel.from_pretrained(str(path), dtype=dtype, attn_implementation=attn_implementation)
    config = vision_config(path)
    state = release_state_to_native(read_safetensors_dir(path), config, where=str(path))
    return InternVLVisionModel.from_pretrained(None, config=config, state_dict=state, dtype=dtype,
                                               attn_implementation=attn_implementation)


def release_state_to_native(release: dict, config: InternVLVisionConfig, *, where: str) -> dict:
    """InternViT release tensors -> ``InternVLVisionModel`` tensors (fused ``attn.qkv`` split into q, k, v),
    each checked against the parameter a meta-device model of the config has, so nothing loads half."""
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in InternVLVisionModel(config).state_dict().items()}
    native = {}
    for key, tensor in release.items():
        try:
            names = release_vision_key_to_native(key)
            pieces = split_vision_qkv(tensor) if len(names) == 3 else (tensor,)
        except LayoutError as exc:
            raise CheckpointError(f"{where}: {exc}; is this an InternViT release directory?") from None
        for name, piece in zip(names, pieces):
            if name not in expected:
                raise CheckpointError(f"{where}: weight {key!r} has no place in a model of its config.json")
            if tuple(piece.shape) != expected[name]:
                raise CheckpointError(f"{where}: weight {key!r} has shape {tuple(tensor.shape)}, which its "
                                      f"config.json does not give it ({name} needs {expected[name]})")
            native[name] = piece
    absent = sorted(set(expected) - set(native))
    if absent:
        raise CheckpointError(f"{where}: InternViT weights lack {absent[0]!r} (as transformers names it)"
                              + (f" and {len(absent) - 1} more" if len(absent) > 1 else ""))
    return native
