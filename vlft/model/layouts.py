"""Recognise what a model directory holds, and read its safetensors weights."""
from __future__ import annotations

import enum
import json
from pathlib import Path

from vlft.errors import CheckpointError
from vlft.families import FAMILIES, family_of_config


#: One "-hf" layout per family (HF_INTERNVL, HF_LLAVA, ..., named after Family.name), so a new family needs no
#: entry here; then the layouts no family owns.
Layout = enum.Enum("Layout", {
    **{f"HF_{family.name.upper()}": family.hf_layout for family in FAMILIES.values()},
    "INTERNVL_CHAT": "original InternVL-chat",
    "VISION": "vision encoder",
    "LLM": "language model",
    "CHECKPOINT": "vlft training checkpoint",
}, module=__name__)


#: The transformers-native ("-hf") layouts of a whole VLM, one per family: what build_vlm, the streamed merge,
#: `--to lora` and `vlft chat` read alike.
WHOLE_HF_LAYOUTS = tuple(Layout(family.hf_layout) for family in FAMILIES.values())

#: ("intern_vit_6b": OpenGVLab's InternViT release, read by vlft.model.vision_dirs without its remote code.)
VISION_TYPES = {"internvl_vision", "clip_vision_model", "siglip_vision_model", "intern_vit_6b"}
LLM_TYPES = {"qwen2", "qwen3", "llama", "mistral", "internlm2"}
#: Families users bring that vlft does not train, by model_type (a clear line instead of "unknown layout").
OUT_OF_SCOPE_TYPES = {"qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}
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
    family = family_of_config(config)
    if family is not None:
        return Layout(family.hf_layout)
    if model_type == "internvl_chat" or "InternVLChatModel" in config.get("architectures", []):
        return Layout.INTERNVL_CHAT
    if model_type in VISION_TYPES:
        return Layout.VISION
    if model_type in LLM_TYPES:
        return Layout.LLM
    if model_type in OUT_OF_SCOPE_TYPES:
        raise CheckpointError(
            f"{path}: a {OUT_OF_SCOPE_TYPES[model_type]} model (model_type {model_type!r}), which is out of vlft's "
            "scope (its vision side, with M-RoPE and native-resolution patches, is another architecture); "
            "vlft trains InternVL and LLaVA")
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


#: The index transformers (and vlft's shard writer) put beside sharded weights.
SAFETENSORS_INDEX = "model.safetensors.index.json"
#: A safetensors header larger than this is no header (safetensors' own limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000


def read_safetensors_header(file: Path) -> tuple[bytes, dict]:
    """(raw bytes of the length prefix + header JSON, parsed header) of one safetensors file, read without
    its weights; CheckpointError naming the file when it is truncated or not safetensors at all."""
    try:
        size = file.stat().st_size
        with file.open("rb") as f:
            prefix = f.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{file}: not a valid safetensors file (invalid header; truncated or damaged "
                                      "download?); copy it again from its source")
            raw = f.read(length)
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot be read ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{file}: not a valid safetensors file (its header is not JSON; truncated or damaged "
                              "download?); copy it again from its source") from None
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    if 8 + length + max(ends, default=0) > size:
        raise CheckpointError(f"{file}: truncated ({size} bytes, its header promises "
                              f"{8 + length + max(ends)}); copy it again from its source")
    return prefix + raw, header


def safetensors_files(path: str | Path) -> list[Path]:
    """The weight files of a model directory, as transformers reads them: the files the index lists when
    there is an index, else every ``*.safetensors``. Each is checked (present, complete header) first, so a
    damaged directory is one line naming the file, not a traceback from deep inside a loader."""
    path = Path(path)
    index = path / SAFETENSORS_INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index}: damaged (no readable weight_map: {exc})") from None
        missing = [name for name in names if not (path / name).is_file()]
        if missing:
            raise CheckpointError(f"{index}: lists {missing[0]}, which is not in {path}"
                                  + (f" ({len(missing) - 1} more shards missing)" if len(missing) > 1 else "")
                                  + "; copy the missing shards again from the model's source")
        files = [path / name for name in names]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in path.glob("*.bin"))
        if pickles:
            raise CheckpointError(
                f"{path}: holds only {', '.join(pickles[:2])}{' ...' if len(pickles) > 2 else ''} (pickle); vlft "
                "reads safetensors only (unpickling can run code): re-save it with safetensors: load it with "
                "transformers' from_pretrained from a source you trust and call save_pretrained(dir), which writes "
                "model.safetensors")
        raise CheckpointError(f"{path}: no *.safetensors weights")
    for file in files:
        read_safetensors_header(file)
    return files


def read_safetensors_dir(path: str | Path) -> dict:
    """All tensors of a (possibly sharded) safetensors directory."""
    from safetensors.torch import load_file

    state = {}
    for file in safetensors_files(path):
        state.update(load_file(str(file)))
    return state
