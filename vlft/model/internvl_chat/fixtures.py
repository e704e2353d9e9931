"""Write InternVL-chat checkpoint directories for tests and the demo (placeholder remote code, real weights)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor

from .config_map import canonical_native, square
from .llms import llm_entry
from .streaming import native_to_internvl_chat

_INTERNVL_REMOTE_CODE = (
    "configuration_intern_vit.py",
    "configuration_internvl_chat.py",
    "conversation.py",
    "modeling_intern_vit.py",
    "modeling_internvl_chat.py",
)


def remote_code_files(llm_arch: str) -> tuple[str, ...]:
    """The trust_remote_code files an InternVL-chat checkpoint directory ships for this LLM."""
    return _INTERNVL_REMOTE_CODE + llm_entry(llm_arch).remote_code


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
            ``(state, hf_config)`` pair. A ``ps_version: 'v1'`` field in the config writes a 'v1' checkpoint.
        out_dir: created if needed; gets ``model.safetensors``, ``config.json`` and placeholder
            remote-code files (one comment line each: they cannot run; a real export copies the base's).
        llm_arch: the LLM registry entry ('internlm2', 'qwen2', 'qwen3', 'llama', 'phi3').
        template: the chat config's ``template`` (InternVL's conversation template name); default: the
            entry's.
        training_fields: overrides of the defaults, which are those of released InternVL2/2.5
            checkpoints (dynamic tiling 1..12 with a thumbnail, tiles of the vision encoder's image size).
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
    canonical = canonical_native(hf_config)
    fields = {
        "template": template or llm_entry(llm_arch).default_template,
        "ps_version": canonical.get("ps_version", "v2"),
        "force_image_size": square(canonical["vision_config"]["image_size"], "image_size"),
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
