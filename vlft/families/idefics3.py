"""Idefics3 and SmolVLM (transformers' `Idefics3ForConditionalGeneration` / `SmolVLMForConditionalGeneration`):
a SigLIP-style tower, a pixel-shuffle + linear connector (the official module, used as it is), and images split
into tiles plus a global image, each tile marked in the ids by ``<fake_token_around_image><row_r_col_c>``.

The two are one architecture under two names (SmolVLM is Idefics3 re-released with its own classes and
defaults), so one module holds both; their processors expand an image the same way.
"""
from __future__ import annotations

import dataclasses

from vlft.families.family import Family, ImageTokens

FAKE_TOKEN = "<fake_token_around_image>"
GLOBAL_TOKEN = "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
#: The processors look up a 6 x 6 grid of tile tokens (their tokenizers hold them as added tokens).
GRID_SIDE = 6
ROW_COL_TOKENS = tuple(f"<row_{r + 1}_col_{c + 1}>" for r in range(GRID_SIDE) for c in range(GRID_SIDE))
#: SigLIP's normalisation, which both image processors default to (IMAGENET_STANDARD_MEAN / _STD).
MEAN = STD = (0.5, 0.5, 0.5)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _split_run(tokenizer, rows: int, cols: int, tokens_per_tile: int) -> list[int]:
    """The ids the processors' prompt string gives for one image (their special tokens cut the text, so each
    newline between them is tokenized on its own, as here)."""
    token = tokenizer.convert_tokens_to_ids
    image = [token(IMAGE_TOKENS.context_token)] * tokens_per_tile
    global_image = [token(FAKE_TOKEN), token(GLOBAL_TOKEN), *image, token(FAKE_TOKEN)]
    if rows == 0 and cols == 0:
        return global_image
    if rows > GRID_SIDE or cols > GRID_SIDE:
        raise ValueError(f"a {rows} x {cols} tile grid: the processor names tiles up to {GRID_SIDE} x {GRID_SIDE} "
                         "(lower data.tiling.longest_edge)")
    run = []
    for row in range(rows):
        for col in range(cols):
            run += [token(FAKE_TOKEN), token(ROW_COL_TOKENS[row * GRID_SIDE + col]), *image]
        if row < rows - 1:
            run += _ids(tokenizer, "\n")
    return run + _ids(tokenizer, "\n\n") + global_image


IMAGE_TOKENS = ImageTokens(context_token="<image>", split_run=_split_run,
                           marker_tokens=(FAKE_TOKEN, GLOBAL_TOKEN, *ROW_COL_TOKENS))
NAMED_TOKENS = {"image_token": IMAGE_TOKENS.context_token, "fake_image_token": FAKE_TOKEN,
                "global_image_token": GLOBAL_TOKEN, "end_of_utterance_token": END_OF_UTTERANCE}


def _default_template(text_type: str, tokenizer) -> str:
    # Idefics3-8B sits on Llama 3 (its tokenizer's BOS); SmolVLM on SmolLM2.
    return "idefics3" if getattr(tokenizer, "bos_token", None) == "<|begin_of_text|>" else "smolvlm"


def _tiling_from_preprocessor(pre: dict) -> dict:
    tiling = {"mode": "split"}
    longest = (pre.get("size") or {}).get("longest_edge")
    if longest:
        tiling["longest_edge"] = int(longest)
    return tiling


def _processor_files_for(image_processor_class: str, processor_class: str):
    def processor_files(info, tiling, common: dict) -> tuple[object, dict, list[str]]:
        """The family's PIL image processor, splitting as training did, + its processor's config."""
        import transformers  # lazy module: only the processor class is loaded, on export
        from transformers.image_utils import PILImageResampling

        kwargs = {key: value for key, value in common.items() if key not in ("size", "resample")}
        image_processor = getattr(transformers, image_processor_class)(
            do_image_splitting=True, size={"longest_edge": tiling.longest_edge},
            max_image_size={"longest_edge": tiling.tile_size}, resample=PILImageResampling.LANCZOS, do_pad=True,
            **kwargs)
        processor = {"processor_class": processor_class, "image_seq_len": info.tokens_per_tile}
        return image_processor, processor, []
    return processor_files


def _processor_image_text_for(processor_class: str, global_attribute: str):
    def processor_image_text(image_processor, processor: dict, image) -> tuple[dict, str]:
        """(features, the image's prompt text) by the processor's own replace_image_token, on an instance
        holding only what it reads (a whole SmolVLMProcessor also needs a video processor)."""
        import transformers  # lazy module: only the processor class is loaded

        features = image_processor(images=[image], return_tensors="pt", return_row_col_info=True)
        expander = object.__new__(getattr(transformers, processor_class))
        expander.fake_image_token, expander.image_token = FAKE_TOKEN, IMAGE_TOKENS.context_token
        setattr(expander, global_attribute, GLOBAL_TOKEN)
        expander.image_seq_len = processor["image_seq_len"]
        return features, expander.replace_image_token(features, 0)
    return processor_image_text


def _processor_image_tokens(image_processor, processor: dict, image) -> tuple[dict, int]:
    features = image_processor(images=[image], return_tensors="pt")
    return features, processor["image_seq_len"] * int(features["pixel_values"].shape[1])


def _info_from_config(config) -> dict:
    # No CLS token (its tower is SigLIP's) and no feature-layer choice: the tower's output, after its post-norm,
    # feeds the connector.
    return {"downsample_ratio": 1.0 / int(config.scale_factor), "select_strategy": "full", "prefix_tokens": 0}


def _config_fields(info) -> dict:
    return {"image_token_id": info.image_token_id, "scale_factor": int(round(1 / info.downsample_ratio))}


IDEFICS3 = Family(
    name="idefics3",
    display_name="Idefics3",
    official_class_name="Idefics3ForConditionalGeneration",
    config_class_name="Idefics3Config",
    processor_class_name="Idefics3Processor",
    hf_layout="transformers-native Idefics3",
    image_token_field="image_token_id",
    computation_fields=("scale_factor", "image_token_id"),
    image_tokens=IMAGE_TOKENS,
    named_tokens=NAMED_TOKENS,
    new_tokens=(IMAGE_TOKENS.context_token, FAKE_TOKEN, GLOBAL_TOKEN, END_OF_UTTERANCE, *ROW_COL_TOKENS),
    mean=MEAN,
    std=STD,
    default_select_layer=-1,
    last_layer_is_output=True,
    pixel_shuffle=True,
    default_downsample_ratio=0.5,
    tiling_modes=("split",),
    default_tiling={"mode": "split"},
    export_targets=("hf", "lora"),
    export_refusals=(("gguf", "llama.cpp's converter reads Idefics3/SmolVLM (its IDEFICS3 mmproj), but vlft does not "
                              "write it yet: llama.cpp's split of an image into tiles + global image is not checked "
                              "against training's, so `--to hf` and llama.cpp's own convert_hf_to_gguf.py are the way "
                              "for now"),),
    default_template=_default_template,
    tiling_from_preprocessor=_tiling_from_preprocessor,
    config_fields=_config_fields,
    processor_files=_processor_files_for("Idefics3ImageProcessorPil", "Idefics3Processor"),
    processor_image_tokens=_processor_image_tokens,
    processor_image_text=_processor_image_text_for("Idefics3Processor", "global_image_tag"),
    official_parts=("vision_model", "connector", "text_model"),
    info_from_config=_info_from_config,
    keeps_official_connector=True,
    stored_prefixes=(("model.vision_model.", "vision_tower."), ("model.connector.", "multi_modal_projector."),
                     ("model.text_model.", "language_model.model."), ("lm_head.", "language_model.lm_head.")),
    pixels_per_sample=True,
)

# Idefics3 under SmolVLM's own classes and processor.
SMOLVLM = dataclasses.replace(
    IDEFICS3,
    name="smolvlm",
    display_name="SmolVLM",
    official_class_name="SmolVLMForConditionalGeneration",
    config_class_name="SmolVLMConfig",
    processor_class_name="SmolVLMProcessor",
    hf_layout="transformers-native SmolVLM",
    processor_files=_processor_files_for("SmolVLMImageProcessorPil", "SmolVLMProcessor"),
    processor_image_text=_processor_image_text_for("SmolVLMProcessor", "global_image_token"),
)
