"""The small files beside the weights: config, generation config, tokenizer + chat template, processor
configs, and ``vlft_model.json`` (what vlft itself needs to reload a merged or converted directory).

Everything is derived from the merged model and the run's resolved config (template, system prompt,
tiling), never copied from the base checkpoint, so an exported directory prompts and tiles exactly as
training did.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from vlft.data.templates import INTERNVL_IMAGE_PLACEHOLDER, LLAVA_IMAGE_PLACEHOLDER, ChatTemplate, get_template
from vlft.data.tiling import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, TilingSpec
from vlft.errors import CheckpointError, ConfigError
from vlft.export.writers import DTYPES
from vlft.model.layouts import read_versioned_record
from vlft.model.vlm import VisionLanguageModel, VLMInfo

#: vlft's description of a merged/converted directory (template, tiling, provenance).
MODEL_RECORD = "vlft_model.json"
RECORD_VERSION = 1
#: Named special tokens InternVLProcessor reads from the tokenizer (tokenizer.start_image_token, ...).
INTERNVL_NAMED_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": INTERNVL_IMAGE_PLACEHOLDER,
    "video_token": "<video>",
}
LLAVA_NAMED_TOKENS = {"image_token": LLAVA_IMAGE_PLACEHOLDER}
#: InternVL's own conversation templates (internvl/conversation.py) that vlft's templates equal.
INTERNVL_CHAT_TEMPLATE_NAMES = {"internlm2-chat": "internlm2-chat", "internvl2_5": "internvl2_5"}


# ------------------------------------------------------------------------------------------------
# Template and tiling of the run


def export_template(spec, family: str) -> ChatTemplate:
    """The training template as the exported chat template: the run's system prompt becomes its default,
    and an image is written as the token the family's processor expands (<IMG_CONTEXT> or <image>)."""
    try:
        template = get_template(spec.data.template)
    except KeyError as exc:
        raise ConfigError(f"data.template: {exc}") from None
    changes = {}
    placeholder = INTERNVL_IMAGE_PLACEHOLDER if family == "internvl" else LLAVA_IMAGE_PLACEHOLDER
    if template.image_placeholder != placeholder:
        changes["image_placeholder"] = placeholder
    if spec.data.system_prompt is not None:
        changes["default_system"] = spec.data.system_prompt
    return dataclasses.replace(template, **changes) if changes else template


def training_tiling(spec, info: VLMInfo) -> TilingSpec:
    """The TilingSpec training used (vlft.data.dataset.pipeline_from_spec builds the same one)."""
    settings = spec.data.tiling
    internvl = info.family == "internvl"
    return TilingSpec(mode=settings.mode, tile_size=settings.tile_size or info.tile_size,
                      min_tiles=settings.min_tiles, max_tiles=settings.max_tiles,
                      use_thumbnail=settings.use_thumbnail,
                      grid_pinpoints=tuple(tuple(p) for p in settings.grid_pinpoints),
                      mean=IMAGENET_MEAN if internvl else CLIP_MEAN, std=IMAGENET_STD if internvl else CLIP_STD)


# ------------------------------------------------------------------------------------------------
# config.json / generation_config.json


def official_config(model: VisionLanguageModel, *, dtype: str):
    """The InternVLConfig / LlavaConfig of the merged model, LM head untied (both matrices are written)."""
    return official_config_of(model.language_model.config, model.vision_tower.config, model.info,
                              vocab_size=model.language_model.get_input_embeddings().num_embeddings, dtype=dtype)


def official_config_of(text_config, vision_config, info: VLMInfo, *, vocab_size: int, dtype: str):
    """official_config from the parts' configs alone (the streamed merge has no model)."""
    from transformers import InternVLConfig, LlavaConfig

    text = text_config.to_dict()
    text["tie_word_embeddings"] = False
    text["vocab_size"] = vocab_size
    vision = vision_config.to_dict()
    common = dict(vision_config=vision, text_config=text, projector_hidden_act="gelu",
                  vision_feature_layer=info.select_layer, vision_feature_select_strategy="default",
                  tie_word_embeddings=False)
    if info.family == "internvl":
        config = InternVLConfig(image_token_id=info.image_token_id, image_seq_length=info.tokens_per_tile,
                                downsample_ratio=info.downsample_ratio, **common)
        config.architectures = ["InternVLForConditionalGeneration"]
    else:
        config = LlavaConfig(image_token_index=info.image_token_id, image_seq_length=info.tokens_per_tile,
                             multimodal_projector_bias=True, **common)
        config.architectures = ["LlavaForConditionalGeneration"]
    config.tie_word_embeddings = False
    for part in (config, config.text_config, config.vision_config):
        part.dtype = DTYPES[dtype]
    return config


def stop_token_ids(tokenizer, template: ChatTemplate) -> list[int]:
    """Ids of the template's stop words that are single tokens (the generation config's eos ids)."""
    ids: list[int] = []
    for word in template.stop_words:
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
    if not ids and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def write_generation_config(out: Path, tokenizer, template: ChatTemplate) -> list[int]:
    from transformers import GenerationConfig

    eos = stop_token_ids(tokenizer, template)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else None)
    config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos[0] if len(eos) == 1 else eos,
                              pad_token_id=pad)
    config.save_pretrained(str(out))
    return eos


# ------------------------------------------------------------------------------------------------
# Tokenizer


def write_tokenizer(out: Path, tokenizer, *, family: str, template: ChatTemplate) -> None:
    """Save the tokenizer with the training chat template and the image tokens as named special tokens.

    The names (``start_image_token`` ... for InternVLProcessor, ``image_token`` for LlavaProcessor) are
    written into tokenizer_config.json the way transformers saves them, which needs no reload of the
    tokenizer (a reload could need the base's remote code, or ask to run it).
    """
    named = INTERNVL_NAMED_TOKENS if family == "internvl" else LLAVA_NAMED_TOKENS
    vocab = tokenizer.get_vocab()
    needed = INTERNVL_NAMED_TOKENS["context_image_token"] if family == "internvl" else LLAVA_IMAGE_PLACEHOLDER
    if needed not in vocab:
        raise CheckpointError(f"the tokenizer has no {needed} token, which the model's image slots need")
    named = {name: token for name, token in named.items() if token in vocab}  # <video> is optional
    previous = tokenizer.chat_template
    tokenizer.chat_template = template.jinja
    try:
        tokenizer.save_pretrained(str(out))
    finally:
        tokenizer.chat_template = previous
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.setdefault("model_specific_special_tokens", {}).update(named)
    config.update(named)
    for key in _LOADING_FLAGS:  # how this tokenizer was loaded here; an export must not carry it
        config.pop(key, None)
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


_LOADING_FLAGS = ("is_local", "local_files_only")


# ------------------------------------------------------------------------------------------------
# Processor files (written by hand: InternVLProcessor needs torchvision, which vlft does not require)


def write_processor_files(out: Path, info: VLMInfo, tiling: TilingSpec) -> list[str]:
    """preprocessor_config.json + processor_config.json for transformers' processor; returns warnings."""
    from transformers.image_utils import PILImageResampling

    warnings = []
    size = {"height": tiling.tile_size, "width": tiling.tile_size}
    common = dict(size=size, image_mean=list(tiling.mean), image_std=list(tiling.std),
                  resample=PILImageResampling.BICUBIC, do_resize=True, do_rescale=True, rescale_factor=1 / 255,
                  do_normalize=True, do_convert_rgb=True)
    if info.family == "internvl":
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

        if tiling.mode == "dynamic" and not tiling.use_thumbnail:
            warnings.append("data.tiling.use_thumbnail=False: transformers' GotOcr2 image processor always adds a "
                            "thumbnail tile, so its tiles differ from training for multi-tile images")
        dynamic = tiling.mode == "dynamic"
        # InternVLProcessor calls the image processor with crop_to_patches=True whatever this file says, so
        # "resize" (one plain tile) is also written as a 1..1 patch budget, which crops to exactly that.
        image_processor = GotOcr2ImageProcessorPil(crop_to_patches=dynamic,
                                                   min_patches=tiling.min_tiles if dynamic else 1,
                                                   max_patches=tiling.max_tiles if dynamic else 1, **common)
        processor = {"processor_class": "InternVLProcessor", "image_seq_length": info.tokens_per_tile}
    else:
        from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

        if tiling.mode == "anyres":
            warnings.append("data.tiling.mode='anyres': LlavaProcessor does not tile (LLaVA-NeXT is another "
                            "architecture); the exported processor feeds one resized image")
        image_processor = LlavaImageProcessorPil(do_pad=tiling.mode == "pad_square", do_center_crop=False,
                                                 crop_size=dict(size), **common)
        processor = {"processor_class": "LlavaProcessor", "patch_size": info.patch_size,
                     "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1,
                     "image_token": LLAVA_IMAGE_PLACEHOLDER}
    image_processor.save_pretrained(str(out))
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    return warnings


# ------------------------------------------------------------------------------------------------
# vlft_model.json


def write_model_record(out: Path, record: dict) -> None:
    (out / MODEL_RECORD).write_text(json.dumps({"format_version": RECORD_VERSION, **record}, indent=2,
                                               default=str) + "\n")


def read_model_record(path: str | Path) -> dict:
    """The record `vlft merge`/`vlft convert` wrote; CheckpointError (one line) when absent or damaged."""
    return read_versioned_record(
        Path(path) / MODEL_RECORD, RECORD_VERSION,
        f"{path}: no {MODEL_RECORD}, so vlft did not write this directory; give a training "
        "checkpoint or the output of `vlft merge` / `vlft convert`")


def exported_spec(path: str | Path, record: dict | None = None, *, dtype: str | None = None,
                  attn_implementation: str | None = None):
    """The run's ExperimentSpec re-pointed at an exported directory: a whole, frozen, unquantized model.

    ``build_vlm(spec.model, quantize=False)`` then loads the directory; the data section (template,
    system prompt, tiling) is the run's, so chat and eval prompt as training did.
    """
    from vlft.config import spec_from_dict

    record = read_model_record(path) if record is None else record
    raw = json.loads(json.dumps(record["config"]))
    model = raw["model"]
    model.update(path=str(path), dtype=dtype or model.get("dtype", "float32"),
                 attn_implementation=attn_implementation or model.get("attn_implementation", "sdpa"),
                 gradient_checkpointing=False)
    model["vision"] = {**model.get("vision", {}), "path": None, "train": "frozen", "lora": None,
                       "select_layer": record["info"]["select_layer"]}
    model["llm"] = {**model.get("llm", {}), "path": None, "train": "frozen", "lora": None, "quantization": None}
    model["connector"] = {**model.get("connector", {}), "train": False}
    return spec_from_dict(raw)
