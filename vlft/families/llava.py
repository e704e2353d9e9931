"""LLaVA-1.5 style (transformers' `LlavaForConditionalGeneration`): CLIP or SigLIP tower, MLP connector."""
from __future__ import annotations

from vlft.data.tiling import CLIP_MEAN, CLIP_STD
from vlft.families.family import Family, ImageTokens

IMAGE_TOKENS = ImageTokens(context_token="<image>")


def _default_template(text_type: str, tokenizer) -> str:
    return "llama3" if getattr(tokenizer, "bos_token", None) == "<|begin_of_text|>" else "vicuna_v1"


def _tiling_from_preprocessor(pre: dict) -> dict:
    return {"mode": "pad_square"}


def _processor_files(info, tiling, common: dict) -> tuple[object, dict, list[str]]:
    """LLaVA's image processor + LlavaProcessor's config (token count from the tower and the strategy)."""
    import transformers  # lazy module: only the processor class is loaded, on export

    warnings = []
    if tiling.mode == "anyres":
        warnings.append("data.tiling.mode='anyres': LlavaProcessor does not tile (LLaVA-NeXT is another "
                        "architecture); the exported processor feeds one resized image")
    image_processor = transformers.LlavaImageProcessorPil(do_pad=tiling.mode == "pad_square", do_center_crop=False,
                                                          crop_size=dict(common["size"]), **common)
    processor = {"processor_class": "LlavaProcessor", "patch_size": info.patch_size,
                 "vision_feature_select_strategy": info.select_strategy,
                 "num_additional_image_tokens": info.prefix_tokens, "image_token": IMAGE_TOKENS.context_token}
    return image_processor, processor, warnings


def _processor_image_tokens(image_processor, processor: dict, image) -> tuple[dict, int]:
    # LlavaProcessor: patches + the tower's extra (CLS) tokens, less one for the "default" strategy.
    features = image_processor(images=[image], return_tensors="pt")
    height, width = features["pixel_values"].shape[-2:]
    patch = processor["patch_size"]
    count = (height // patch) * (width // patch) + processor["num_additional_image_tokens"]
    return features, count - (processor["vision_feature_select_strategy"] == "default")


def _config_fields(info) -> dict:
    return {"image_token_index": info.image_token_id, "image_seq_length": info.tokens_per_tile,
            "multimodal_projector_bias": True}


LLAVA = Family(
    name="llava",
    display_name="LLaVA",
    official_class_name="LlavaForConditionalGeneration",
    config_class_name="LlavaConfig",
    processor_class_name="LlavaProcessor",
    hf_layout="transformers-native LLaVA",
    image_token_field="image_token_index",
    computation_fields=("vision_feature_layer", "vision_feature_select_strategy", "image_seq_length",
                        "image_token_index"),
    image_tokens=IMAGE_TOKENS,
    named_tokens={"image_token": IMAGE_TOKENS.context_token},
    new_tokens=(IMAGE_TOKENS.context_token,),
    mean=CLIP_MEAN,
    std=CLIP_STD,
    default_select_layer=-2,
    last_layer_is_output=False,
    pixel_shuffle=False,
    default_downsample_ratio=1.0,
    tiling_modes=("pad_square", "anyres", "resize"),
    default_tiling={"mode": "pad_square"},
    export_targets=("hf", "lora"),
    export_refusals=(("gguf", "llama.cpp's convert_hf_to_gguf.py --mmproj has no LLaVA-1.5 projector (its "
                             "LlavaForConditionalGeneration vision side is Pixtral's only; LLaVA-1.5 goes through its "
                             "legacy llava_surgery scripts on the original LLaVA checkpoint)"),),
    default_template=_default_template,
    tiling_from_preprocessor=_tiling_from_preprocessor,
    config_fields=_config_fields,
    processor_files=_processor_files,
    processor_image_tokens=_processor_image_tokens,
)
