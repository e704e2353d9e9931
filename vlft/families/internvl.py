"""InternVL (2 / 2.5 / 3, transformers' "-hf" layout; the original InternVL-chat layout reads into it)."""
from __future__ import annotations

from pathlib import Path

from vlft.data.tiling import IMAGENET_MEAN, IMAGENET_STD
from vlft.families.family import Family, ImageTokens

IMAGE_TOKENS = ImageTokens(context_token="<IMG_CONTEXT>", start_token="<img>", end_token="</img>")
VIDEO_TOKEN = "<video>"
#: What InternVLProcessor reads from the tokenizer (tokenizer.start_image_token, ...).
NAMED_TOKENS = {
    "start_image_token": IMAGE_TOKENS.start_token,
    "end_image_token": IMAGE_TOKENS.end_token,
    "context_image_token": IMAGE_TOKENS.context_token,
    "video_token": VIDEO_TOKEN,
}
DEFAULT_TILING = {"mode": "dynamic", "min_tiles": 1, "max_tiles": 12, "use_thumbnail": True}


def opengvlab_repository(base_model: str | None) -> str | None:
    """The OpenGVLab repository of the original layout that matches an -hf base's name, when it has one:
    ``.../models--OpenGVLab--InternVL3-1B-hf/snapshots/x`` or ``OpenGVLab/InternVL3-1B-hf`` -> ``OpenGVLab/InternVL3-1B``
    (where a user gets the remote code an InternVL-chat export of that base needs).
    """
    if not base_model:
        return None
    parts = Path(str(base_model)).parts
    cached = next((p for p in parts if p.startswith("models--")), None)
    name = (cached.split("--")[-1] if cached else parts[-1]).removesuffix("-hf")
    return f"OpenGVLab/{name}" if name.lower().startswith(_RELEASE_PREFIX) else None


_RELEASE_PREFIX = "internvl"  # OpenGVLab's InternVL releases: InternVL2-2B, InternVL3_5-1B, ...


def _default_template(text_type: str, tokenizer) -> str:
    # InternVL2.5/3 sit on Qwen2.5 (internvl2_5); InternVL2 on InternLM2 or Llama (internlm2-chat).
    return "internvl2_5" if text_type.startswith("qwen") else "internlm2-chat"


def _tiling_from_preprocessor(pre: dict) -> dict:
    """GotOcr2 image processor fields -> data.tiling (vlft.export.hf_files writes the inverse)."""
    tiling = dict(DEFAULT_TILING)
    if not pre.get("crop_to_patches", True):
        tiling["mode"] = "resize"
    tiling["min_tiles"] = int(pre.get("min_patches", tiling["min_tiles"]))
    tiling["max_tiles"] = int(pre.get("max_patches", tiling["max_tiles"]))
    return tiling


def _processor_files(info, tiling, common: dict) -> tuple[object, dict, list[str]]:
    """GotOcr2 image processor (its torchvision-free twin) + InternVLProcessor's config."""
    import transformers  # lazy module: only the processor class is loaded, on export

    warnings = []
    if tiling.mode == "dynamic" and not tiling.use_thumbnail:
        warnings.append("data.tiling.use_thumbnail=False: transformers' GotOcr2 image processor always adds a "
                        "thumbnail tile, so its tiles differ from training for multi-tile images")
    dynamic = tiling.mode == "dynamic"
    # InternVLProcessor calls the image processor with crop_to_patches=True whatever this file says, so
    # "resize" (one plain tile) is also written as a 1..1 patch budget, which crops to exactly that.
    image_processor = transformers.GotOcr2ImageProcessorPil(crop_to_patches=dynamic,
                                                            min_patches=tiling.min_tiles if dynamic else 1,
                                                            max_patches=tiling.max_tiles if dynamic else 1, **common)
    processor = {"processor_class": "InternVLProcessor", "image_seq_length": info.tokens_per_tile}
    return image_processor, processor, warnings


def _processor_image_tokens(image_processor, processor: dict, image) -> tuple[dict, int]:
    # InternVLProcessor passes crop_to_patches=True whatever the image processor's config says.
    features = image_processor(images=[image], return_tensors="pt", crop_to_patches=True)
    tiles = int(features["num_patches"][0]) if "num_patches" in features else features["pixel_values"].shape[0]
    return features, processor["image_seq_length"] * tiles


def _config_fields(info) -> dict:
    return {"image_token_id": info.image_token_id, "image_seq_length": info.tokens_per_tile,
            "downsample_ratio": info.downsample_ratio}


INTERNVL = Family(
    name="internvl",
    display_name="InternVL",
    official_class_name="InternVLForConditionalGeneration",
    config_class_name="InternVLConfig",
    processor_class_name="InternVLProcessor",
    hf_layout="transformers-native InternVL",
    image_token_field="image_token_id",
    computation_fields=("vision_feature_layer", "vision_feature_select_strategy", "image_seq_length",
                        "downsample_ratio", "image_token_id", "ps_version"),
    image_tokens=IMAGE_TOKENS,
    named_tokens=NAMED_TOKENS,
    new_tokens=(IMAGE_TOKENS.start_token, IMAGE_TOKENS.end_token, IMAGE_TOKENS.context_token, VIDEO_TOKEN),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    default_select_layer=-1,
    last_layer_is_output=True,
    pixel_shuffle=True,
    default_downsample_ratio=0.5,
    tiling_modes=("dynamic", "resize"),
    default_tiling=DEFAULT_TILING,
    export_targets=("hf", "internvl-chat", "lora", "gguf"),
    gguf_layout="internvl-chat",  # the converter reads InternVLChatModel (llm_config + InternVisionModel), not -hf
    default_template=_default_template,
    tiling_from_preprocessor=_tiling_from_preprocessor,
    config_fields=_config_fields,
    processor_files=_processor_files,
    processor_image_tokens=_processor_image_tokens,
)
