"""What a model directory says about itself (tile size, tokens per tile, image token) without its weights.

`vlft check-data` needs the tokenizer and the `VLMInfo` that `build_vlm` would give, but must not load a 7B
model to get them: config.json and the tokenizer files hold all of it. Every value here is derived the way
`vlft.model.load` derives it, so the pre-flight numbers are the numbers training will see.
"""
from __future__ import annotations

import json
from pathlib import Path

from vlft.errors import CheckpointError
from vlft.model.layouts import WHOLE_HF_LAYOUTS, Layout, detect_layout
from vlft.families import INTERNVL, family_named
from vlft.model.internvl_chat import PS_VERSION_KEY, chat_config_to_native
from vlft.model.load import load_tokenizer, missing_image_tokens, official_info, parts_info
from vlft.model.normalisation import base_normalisation
from vlft.model.vision_dirs import vision_config
from vlft.model.vlm import VLMInfo
from vlft.specs import ModelSpec


def model_facts(spec: ModelSpec) -> tuple[VLMInfo, object]:
    """The `VLMInfo` and tokenizer of the model a spec describes, from config.json + tokenizer files only.

    Layouts as `build_vlm`: transformers-native InternVL / LLaVA, original InternVL-chat, or parts (a
    vision-encoder directory + an LLM directory, whose tokenizer gets the missing image tokens added in
    memory, as `build_vlm` adds them).

    Raises:
        CheckpointError: a directory that is missing or is not the layout it should be.
    """
    if spec.path is None:
        info, tokenizer = _parts_facts(spec)
    else:
        layout = detect_layout(spec.path)
        if layout in WHOLE_HF_LAYOUTS:
            info, tokenizer = _official_facts(spec.path, layout)
        elif layout is Layout.INTERNVL_CHAT:
            info, tokenizer = _internvl_chat_facts(spec.path)
        else:
            raise CheckpointError(f"model.path={spec.path}: a {layout.value} directory is not a whole VLM; "
                                  "use model.vision.path and model.llm.path to compose from parts")
    if spec.vision.select_layer is not None:
        info = VLMInfo(**{**info.__dict__, "select_layer": spec.vision.select_layer})
    return info, tokenizer


def _official_facts(path, layout: Layout) -> tuple[VLMInfo, object]:
    """transformers-native "-hf" directories: AutoConfig fills the fields save_pretrained leaves out as defaults."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    return official_info(config, where=str(path)), load_tokenizer(path)


def _internvl_chat_facts(path) -> tuple[VLMInfo, object]:
    """Original InternVL-chat: `force_image_size` (else the vision image size), patch size, downsample ratio."""
    tokenizer = load_tokenizer(path)
    chat_config = json.loads((Path(path) / "config.json").read_text())
    image_token_id = tokenizer.convert_tokens_to_ids(INTERNVL.image_tokens.context_token)
    # The same translation build_vlm loads through, so an unsupported config fails here the same way.
    native = chat_config_to_native(chat_config, image_token_id=image_token_id, allow_ps_v1=True)
    vision = native["vision_config"]
    info = VLMInfo(family=INTERNVL.name, image_token_id=int(image_token_id),
                   select_layer=int(native["vision_feature_layer"]),
                   downsample_ratio=float(native["downsample_ratio"]),
                   # InternVLChatModel sizes its input by force_image_size when it is set.
                   tile_size=int(chat_config.get("force_image_size") or _first(vision["image_size"])),
                   patch_size=_first(vision["patch_size"]),
                   select_strategy=native.get("vision_feature_select_strategy", "default"),
                   ps_version=native.get(PS_VERSION_KEY, "v2"),
                   **base_normalisation(path, vision.get("model_type")))
    return info, tokenizer


def _parts_facts(spec: ModelSpec) -> tuple[VLMInfo, object]:
    """Stage 1 from parts: the vision directory's config and the LLM directory's tokenizer (+ image tokens)."""
    for key, path, expected in (("model.vision.path", spec.vision.path, Layout.VISION),
                                ("model.llm.path", spec.llm.path, Layout.LLM)):
        layout = detect_layout(path)
        if layout is not expected:
            raise CheckpointError(f"{key}={path}: expected a {expected.value} directory, found {layout.value}")
    tokenizer = load_tokenizer(spec.llm.path)
    family = family_named(spec.family)
    missing = missing_image_tokens(tokenizer, family)
    if missing:  # in memory only: check-data writes nothing
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    vision = vision_config(spec.vision.path)
    return parts_info(spec, family, vision, tokenizer), tokenizer


def _first(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)
