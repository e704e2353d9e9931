"""The small files beside the weights: config, generation config, tokenizer + chat template, processor
configs, and ``vlft_model.json`` (what vlft itself needs to reload a merged or converted directory).

Everything is derived from the merged model and the run's resolved config (template, system prompt,
tiling), never copied from the base checkpoint, so an exported directory prompts and tiles exactly as
training did.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

from vlft.config import spec_from_dict
from vlft.data.dataset import anyres_pinpoints
from vlft.data.prompt import stop_token_ids
from vlft.data.templates import ChatTemplate, get_template
from vlft.data.tiling import TilingSpec
from vlft.errors import CheckpointError, ConfigError
from vlft.export.writers import DTYPES
from vlft.families import family_named, normalisation_of
from vlft.families.internvl import opengvlab_repository
from vlft.model.internvl_chat import PS_VERSION_KEY, remote_code_files
from vlft.model.layouts import read_versioned_record
from vlft.model.vlm import VisionLanguageModel, VLMInfo

#: vlft's description of a merged/converted directory (template, tiling, provenance).
MODEL_RECORD = "vlft_model.json"
RECORD_VERSION = 1
#: What an image is written as in the original InternVL-chat layout's prompts: InternVL's own `chat`,
#: vLLM's and LMDeploy's InternVL processors replace each "<image>" with <img> + <IMG_CONTEXT>*n + </img>.
CHAT_LAYOUT_IMAGE_PLACEHOLDER = "<image>"
#: InternVL's own conversation templates (internvl/conversation.py) that vlft's templates equal.
INTERNVL_CHAT_TEMPLATE_NAMES = {"internlm2-chat": "internlm2-chat", "internvl2_5": "internvl2_5", "Hermes-2": "Hermes-2",
                                "phi3-chat": "phi3-chat"}


# ------------------------------------------------------------------------------------------------
# Template and tiling of the run


def export_template(spec, family: str, *, layout: str = "hf") -> ChatTemplate:
    """The training template as the exported chat template: the run's system prompt becomes its default,
    and an image is written as the placeholder the layout's processor expands: <IMG_CONTEXT> (transformers'
    InternVLProcessor) or <image> (LlavaProcessor; the InternVL-chat layout's servers and InternVL's `chat`)."""
    try:
        template = get_template(spec.data.template)
    except KeyError as exc:
        raise ConfigError(f"data.template: {exc}") from None
    changes = {}
    placeholder = CHAT_LAYOUT_IMAGE_PLACEHOLDER if layout == "internvl-chat" else family_named(family).image_placeholder
    if template.image_placeholder != placeholder:
        changes["image_placeholder"] = placeholder
    if spec.data.system_prompt is not None:
        changes["default_system"] = spec.data.system_prompt
    return dataclasses.replace(template, **changes) if changes else template


def training_tiling(spec, info: VLMInfo) -> TilingSpec:
    """The TilingSpec training used (vlft.data.dataset.pipeline_from_spec builds the same one)."""
    settings = spec.data.tiling
    mean, std = normalisation_of(info)
    return TilingSpec(mode=settings.mode, tile_size=settings.tile_size or info.tile_size,
                      min_tiles=settings.min_tiles, max_tiles=settings.max_tiles,
                      use_thumbnail=settings.use_thumbnail, grid_pinpoints=anyres_pinpoints(settings, info),
                      mean=mean, std=std, longest_edge=settings.longest_edge or 0)


def chat_training_fields(spec, info) -> dict:
    """The InternVL-chat config fields, from the run (never copied from the base)."""
    tiling = training_tiling(spec, info)
    return {
        "template": INTERNVL_CHAT_TEMPLATE_NAMES[spec.data.template],
        "ps_version": info.ps_version,
        "force_image_size": tiling.tile_size,
        "dynamic_image_size": tiling.mode == "dynamic",
        "min_dynamic_patch": tiling.min_tiles,
        "max_dynamic_patch": tiling.max_tiles,
        "use_thumbnail": tiling.use_thumbnail,
        "downsample_ratio": info.downsample_ratio,
        "select_layer": info.select_layer,
    }


# ------------------------------------------------------------------------------------------------
# config.json / generation_config.json


def official_config(model: VisionLanguageModel, *, dtype: str):
    """The InternVLConfig / LlavaConfig of the merged model, LM head untied (both matrices are written)."""
    return official_config_of(model.language_model.config, model.vision_tower.config, model.info,
                              vocab_size=model.language_model.get_input_embeddings().num_embeddings, dtype=dtype)


def official_config_of(text_config, vision_config, info: VLMInfo, *, vocab_size: int, dtype: str):
    """official_config from the parts' configs alone (the streamed merge has no model)."""
    family = family_named(info.family)
    text = text_config.to_dict()
    text["tie_word_embeddings"] = False
    text["vocab_size"] = vocab_size
    vision = vision_config.to_dict()
    config = family.config_class()(
        vision_config=vision, text_config=text, projector_hidden_act="gelu", vision_feature_layer=info.select_layer,
        vision_feature_select_strategy=info.select_strategy, tie_word_embeddings=False, **family.config_fields(info))
    config.architectures = [family.official_class_name]
    config.tie_word_embeddings = False
    if info.ps_version != "v2":
        # vlft's reading of a 'v1' InternVL-chat base: a merged directory keeps it for a later --to internvl-chat
        # (transformers ignores the field, which is why --to hf refuses such a model).
        setattr(config, PS_VERSION_KEY, info.ps_version)
    for part in (config, config.text_config, config.vision_config):
        part.dtype = DTYPES[dtype]
    return config


def write_generation_config(out: Path, tokenizer, template: ChatTemplate) -> list[int]:
    """generation_config.json whose eos ids are vlft.data.prompt's stop rule (as chat and training samples)."""
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
    known = family_named(family)
    named = known.named_tokens
    vocab = tokenizer.get_vocab()
    needed = known.image_tokens.context_token
    if needed not in vocab:
        raise CheckpointError(f"the tokenizer has no {needed} token, which the model's image slots need")
    missing = [token for token in named.values() if token not in vocab]
    if missing:
        # InternVLProcessor reads every name (video_token too, though vlft trains no video), and a
        # transformers 5 tokenizer adds a named token it lacks at load time anyway: add it here, once, so
        # every reader (vLLM's tokenizer, older transformers) sees the same ids. A copy: the caller's
        # tokenizer stays as trained.
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.add_tokens(missing, special_tokens=True)
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
    image_processor, processor, family_warnings = family_named(info.family).processor_files(info, tiling, common)
    warnings += family_warnings
    image_processor.save_pretrained(str(out))
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    return warnings


# ------------------------------------------------------------------------------------------------
# InternVL-chat remote code


def missing_remote_code_line(llm_arch: str, base_model: str | None) -> str:
    """One line for an InternVL-chat export without the remote code: which files, and where to get them
    (config.json's auto_map already names them, so dropping them in is all that is left)."""
    files = ", ".join(remote_code_files(llm_arch))
    repository = opengvlab_repository(base_model)
    where = (f"the matching OpenGVLab repository, {repository}" if repository else
             f"the OpenGVLab InternVL release with the same LLM ({_EXAMPLE_RELEASES.get(llm_arch, 'OpenGVLab')})")
    return (f"the folder is not complete: the base had no InternVL remote code, so add {files} from {where}; "
            "config.json's auto_map already points at them (trust_remote_code)")


_EXAMPLE_RELEASES = {"internlm2": "e.g. OpenGVLab/InternVL2-2B", "qwen2": "e.g. OpenGVLab/InternVL2_5-1B",
                     "llama": "e.g. OpenGVLab/InternVL2-Llama3-76B", "qwen3": "e.g. OpenGVLab/InternVL3_5-1B",
                     "phi3": "e.g. OpenGVLab/InternVL2-4B"}


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
