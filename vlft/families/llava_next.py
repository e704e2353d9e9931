"""LLaVA-NeXT (transformers' `LlavaNextForConditionalGeneration`): LLaVA's tower and MLP, AnyRes tiles (a base
image + the best pinpoint's grid), grid features unpadded with an `image_newline` per row (vlft.data.anyres_grid)."""
from __future__ import annotations

import dataclasses

from vlft.families.llava import IMAGE_TOKENS, LLAVA
#: LlavaNextImageProcessor's default canvases (llava-v1.6), (height, width).
DEFAULT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


def _tiling_from_preprocessor(pre: dict) -> dict:
    pinpoints = pre.get("image_grid_pinpoints") or DEFAULT_PINPOINTS
    return {"mode": "anyres", "grid_pinpoints": [list(p) for p in pinpoints]}


def _processor_files(info, tiling, common: dict) -> tuple[object, dict, list[str]]:
    """LLaVA-NeXT's image processor (the pinpoints training tiled with) + LlavaNextProcessor's config."""
    import transformers  # lazy module: only the processor class is loaded, on export

    warnings = []
    pinpoints = [list(p) for p in (tiling.grid_pinpoints or info.grid_pinpoints)]
    if tiling.grid_pinpoints and tuple(map(tuple, tiling.grid_pinpoints)) != tuple(map(tuple, info.grid_pinpoints)):
        warnings.append("data.tiling.grid_pinpoints differ from the model's image_grid_pinpoints: the model unpads "
                        "by its own, so its features and the processor's token count disagree")
    image_processor = transformers.LlavaNextImageProcessorPil(image_grid_pinpoints=pinpoints, do_pad=True,
                                                              do_center_crop=False, crop_size=dict(common["size"]),
                                                              **common)
    processor = {"processor_class": "LlavaNextProcessor", "patch_size": info.patch_size,
                 "vision_feature_select_strategy": info.select_strategy,
                 "num_additional_image_tokens": info.prefix_tokens, "image_token": IMAGE_TOKENS.context_token}
    return image_processor, processor, warnings


def anyres_processor_count(processor_class: str, reads: dict, image_processor, processor: dict,
                           image) -> tuple[dict, int]:
    """(features, image tokens) as an AnyRes processor counts them: its own `_get_number_of_features`, on an
    instance holding only the attributes it reads (a whole processor would need the tokenizer, which the
    family hook is not given)."""
    import transformers  # lazy module: only the processor class is loaded

    features = image_processor(images=[image], return_tensors="pt")
    height, width = (int(v) for v in features["image_sizes"][0])
    counter = object.__new__(getattr(transformers, processor_class))
    counter.image_processor = image_processor
    for name, value in reads.items():
        setattr(counter, name, value)
    tile = features["pixel_values"].shape[-1]
    count = counter._get_number_of_features(height, width, tile, tile)
    return features, count - (processor["vision_feature_select_strategy"] == "default")


def _processor_image_tokens(image_processor, processor: dict, image) -> tuple[dict, int]:
    """LlavaNextProcessor's count: base tokens + unpadded grid + one newline per row."""
    reads = {"patch_size": processor["patch_size"],
             "num_additional_image_tokens": processor["num_additional_image_tokens"]}
    return anyres_processor_count("LlavaNextProcessor", reads, image_processor, processor, image)


def _config_fields(info) -> dict:
    return {"image_token_index": info.image_token_id, "image_seq_length": info.tokens_per_tile,
            "image_grid_pinpoints": [list(p) for p in info.grid_pinpoints], "multimodal_projector_bias": True}


# LLaVA's tower, tokens, normalisation and connector; its own class, processor and AnyRes tiling.
LLAVA_NEXT = dataclasses.replace(
    LLAVA,
    name="llava_next",
    display_name="LLaVA-NeXT",
    official_class_name="LlavaNextForConditionalGeneration",
    config_class_name="LlavaNextConfig",
    processor_class_name="LlavaNextProcessor",
    hf_layout="transformers-native LLaVA-NeXT",
    computation_fields=("vision_feature_layer", "vision_feature_select_strategy", "image_grid_pinpoints",
                        "image_token_index"),
    tiling_modes=("anyres",),
    default_tiling={"mode": "anyres"},  # grid_pinpoints unset: the model's own image_grid_pinpoints
    tiling_from_preprocessor=_tiling_from_preprocessor,
    config_fields=_config_fields,
    export_refusals=(("gguf", "llama.cpp's convert_hf_to_gguf.py --mmproj has no LlavaNextForConditionalGeneration (no "
                             "AnyRes projector with image_newline)"),),
    processor_files=_processor_files,
    processor_image_tokens=_processor_image_tokens,
)
