"""Recognise what a model directory holds, and read its safetensors weights."""
from __future__ import annotations

import enum
import json
from pathlib import Path

from vlft.errors import CheckpointError


class Layout(enum.Enum):
    HF_INTERNVL = "transformers-native InternVL"
    HF_LLAVA = "transformers-native LLaVA"
    INTERNVL_CHAT = "original InternVL-chat"
    VISION = "vision encoder"
    LLM = "language model"
    CHECKPOINT = "vlft training checkpoint"


VISION_TYPES = {"internvl_vision", "clip_vision_model", "siglip_vision_model"}
LLM_TYPES = {"qwen2", "qwen3", "llama", "mistral", "internlm2"}
#: The file `vlft train` writes into every checkpoint directory.
CHECKPOINT_MARKER = "vlft_checkpoint.json"


def read_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory")
    config = path / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{path}: no config.json, so this is not a model directory")
    try:
        return json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config}: not valid JSON ({exc})") from None


def detect_layout(path: str | Path) -> Layout:
    path = Path(path)
    if (path / CHECKPOINT_MARKER).is_file():
        return Layout.CHECKPOINT
    config = read_config(path)
    model_type = config.get("model_type", "")
    if model_type == "internvl":
        return Layout.HF_INTERNVL
    if model_type == "llava":
        return Layout.HF_LLAVA
    if model_type == "internvl_chat" or "InternVLChatModel" in config.get("architectures", []):
        return Layout.INTERNVL_CHAT
    if model_type in VISION_TYPES:
        return Layout.VISION
    if model_type in LLM_TYPES:
        return Layout.LLM
    if model_type == "llava_next":
        raise CheckpointError(
            f"{path}: a LLaVA-NeXT model (model_type 'llava_next'), which vlft does not train yet: its unpadded "
            "AnyRes features with newline tokens are not implemented; LLaVA-1.5 (model_type 'llava') is supported")
    raise CheckpointError(
        f"{path}: unknown model layout (config.json model_type={model_type!r}); supported: transformers-native "
        "InternVL or LLaVA, original InternVL-chat, a vision encoder + an LLM, or a vlft checkpoint")


def read_versioned_record(file: Path, version: int, missing: str) -> dict:
    """A JSON record vlft wrote into a directory; CheckpointError (one line) if absent, damaged or of
    another format version. `missing` is the message when the file is absent."""
    if not file.is_file():
        raise CheckpointError(missing)
    try:
        record = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: damaged ({exc})") from None
    if record.get("format_version") != version:
        raise CheckpointError(f"{file}: format_version {record.get('format_version')} is not {version}")
    return record


def safetensors_files(path: str | Path) -> list[Path]:
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors weights")
    return files


def read_safetensors_dir(path: str | Path) -> dict:
    """All tensors of a (possibly sharded) safetensors directory."""
    from safetensors.torch import load_file

    state = {}
    for file in safetensors_files(path):
        state.update(load_file(str(file)))
    return state
