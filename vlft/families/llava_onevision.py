"""LLaVA-OneVision (transformers' `LlavaOnevisionForConditionalGeneration`): SigLIP + Qwen2, AnyRes tiles with the
"anyres_max_N" budget: unpadded grid features larger than N tiles are shrunk (vlft.data.anyres_grid)."""
from __future__ import annotations

import dataclasses

from vlft.families.llava import IMAGE_TOKENS
from vlft.families.llava_next import LLAVA_NEXT, anyres_processor_count
#: SigLIP's normalisation, as LlavaOnevisionImageProcessor's defaults.
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def _default_template(text_type: str, tokenizer) -> str:
    return "chatml"  # OneVision sits on Qwen2, whose chat format is chatml


def _processor_files(info, tiling, common: dict) -> tuple[object, dict, list[str]]:
    """LLaVA-OneVision's image processor (the pinpoints training tiled with) + LlavaOnevisionProcessor's config."""
    import transformers  # lazy module: only the processor class is loaded, on export

    pinpoints = [list(p) for p in (tiling.grid_pinpoints or info.grid_pinpoints)]
    image_processor = transformers.LlavaOnevisionImageProcessorPil(image_grid_pinpoints=pinpoints, **common)
    processor = {"processor_class": "LlavaOnevisionProcessor", "num_image_tokens": info.tokens_per_tile,
                 "vision_feature_select_strategy": info.select_strategy,
                 "vision_aspect_ratio": f"anyres_max_{info.anyres_max_tiles}",
                 "image_token": IMAGE_TOKENS.context_token}
    return image_processor, processor, []


def _processor_image_tokens(image_processor, processor: dict, image) -> tuple[dict, int]:
    """LlavaOnevisionProcessor's count (anyres_max shrinking included)."""
    reads = {"num_image_tokens": processor["num_image_tokens"], "vision_aspect_ratio": processor["vision_aspect_ratio"]}
    return anyres_processor_count("LlavaOnevisionProcessor", reads, image_processor, processor, image)


def _config_fields(info) -> dict:
    return {"image_token_index": info.image_token_id,
            "image_grid_pinpoints": [list(p) for p in info.grid_pinpoints],
            "vision_aspect_ratio": f"anyres_max_{info.anyres_max_tiles}", "multimodal_projector_bias": True}


# LLaVA-NeXT's AnyRes with SigLIP's normalisation and last-layer features, OneVision's class and budget.
LLAVA_ONEVISION = dataclasses.replace(
    LLAVA_NEXT,
    name="llava_onevision",
    display_name="LLaVA-OneVision",
    official_class_name="LlavaOnevisionForConditionalGeneration",
    config_class_name="LlavaOnevisionConfig",
    processor_class_name="LlavaOnevisionProcessor",
    hf_layout="transformers-native LLaVA-OneVision",
    computation_fields=("vision_feature_layer", "vision_feature_select_strategy", "image_grid_pinpoints",
                        "vision_aspect_ratio", "image_token_index"),
    mean=SIGLIP_MEAN,
    std=SIGLIP_STD,
    default_select_layer=-1,
    default_tiling={"mode": "anyres"},
    default_template=_default_template,
    config_fields=_config_fields,
    export_refusals=(("gguf", "llama.cpp's convert_hf_to_gguf.py --mmproj has no LlavaOnevisionForConditionalGeneration (no "
                             "AnyRes projector with image_newline)"),),
    processor_files=_processor_files,
    processor_image_tokens=_processor_image_tokens,
)
