"""Build the composed VLM from a model spec: a whole checkpoint (any supported layout) or parts."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from vlft.errors import CheckpointError
from vlft.families import INTERNVL, Family, family_named, family_of_layout
from vlft.model.connector import PS_VERSIONS, Connector
from vlft.model.internvl_chat import PS_VERSION_KEY, internvl_chat_to_native
from vlft.model.layouts import WHOLE_HF_LAYOUTS, Layout, detect_layout, read_safetensors_dir, safetensors_files
from vlft.model.anyres import anyres_fields, with_image_newline
from vlft.model.normalisation import base_normalisation
from vlft.model.vision_dirs import load_vision_encoder, vision_config
from vlft.model.vlm import VisionLanguageModel, VLMInfo
from vlft.specs import ModelSpec, QuantSpec

#: Tokens a vision tower puts before its patches (a CLS token) where it is not one; SigLIP has none.
VISION_PREFIX_TOKENS = {"siglip_vision_model": 0}
SELECT_STRATEGIES = ("default", "full")


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def quantization_config(quant: QuantSpec | None, family: Family):
    """bitsandbytes settings for the LLM only: the vision tower, connector and lm_head stay unquantized (by the
    names the family's official class gives them)."""
    if quant is None:
        return None
    from transformers import BitsAndBytesConfig

    # transformers matches these as regexes from the start of the module name (or as suffixes)
    tower, connector, _ = family.official_parts
    keep = [f".*{tower}", f".*{connector}", "lm_head"]
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant.quant_type,
                              bnb_4bit_use_double_quant=quant.double_quant,
                              bnb_4bit_compute_dtype=torch_dtype(quant.compute_dtype),
                              llm_int8_skip_modules=keep)


#: Opt-in for tokenizers that exist only as remote code (InternVL2's InternLM2Tokenizer); weights never need it.
TRUST_REMOTE_CODE_ENV = "VLFT_TRUST_REMOTE_CODE"


def load_tokenizer(path: str | Path):
    import os

    from transformers import AutoTokenizer

    trust = os.environ.get(TRUST_REMOTE_CODE_ENV, "") == "1"
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust)
    except Exception as exc:
        config = Path(path) / "tokenizer_config.json"
        if not trust and config.is_file() and '"auto_map"' in config.read_text():
            raise CheckpointError(
                f"{path}: its tokenizer exists only as remote code; vlft runs none by default: set "
                f"{TRUST_REMOTE_CODE_ENV}=1 to load that tokenizer (weights are always read without remote code)"
            ) from None
        raise CheckpointError(f"{path}: no usable tokenizer ({str(exc).splitlines()[0]})") from None


def build_vlm(spec: ModelSpec, *, quantize: bool = True, tokenizer_dir: str | Path | None = None,
              ) -> tuple[VisionLanguageModel, object]:
    """Load the model a spec describes, with its tokenizer. LoRA is applied later (vlft.model.adapters).

    quantize=False loads the LLM in full precision even if the spec asks for QLoRA (merging needs that).
    tokenizer_dir: a checkpoint's saved tokenizer, which already holds any tokens training added.
    """
    quant = quantization_config(spec.llm.quantization, family_named(spec.family)) if quantize else None
    kwargs = dict(dtype=torch_dtype(spec.dtype), attn_implementation=spec.attn_implementation,
                  quantization_config=quant)
    if spec.path is not None:
        layout = detect_layout(spec.path)
        if layout in WHOLE_HF_LAYOUTS:
            safetensors_files(spec.path)  # one line for pickle-only, missing or truncated weights
            return _from_official_dir(spec.path, layout, spec, kwargs)
        if layout is Layout.INTERNVL_CHAT:
            return _from_internvl_chat_dir(spec.path, spec, kwargs)
        raise CheckpointError(f"model.path={spec.path}: a {layout.value} directory is not a whole VLM; "
                              "use model.vision.path and model.llm.path to compose from parts")
    return _from_parts(spec, kwargs, tokenizer_dir)


def _from_official_dir(path, layout: Layout, spec: ModelSpec, kwargs):
    official = family_of_layout(layout).official_class().from_pretrained(str(path), **kwargs)
    return _decompose(official, spec), load_tokenizer(path)


def _from_internvl_chat_dir(path, spec: ModelSpec, kwargs):
    """Map the original layout's weights into the official class without running its remote code."""
    tokenizer = load_tokenizer(path)
    chat_config = json.loads((Path(path) / "config.json").read_text())
    image_token_id = tokenizer.convert_tokens_to_ids(INTERNVL.image_tokens.context_token)
    # A 'v1' pixel shuffle (InternVL-Chat-V1-5) rides along as the config's ps_version; vlft's connector reads it.
    native, hf_config = internvl_chat_to_native(read_safetensors_dir(path), chat_config,
                                                image_token_id=image_token_id, allow_ps_v1=True)
    official = INTERNVL.official_class().from_pretrained(
        None, config=INTERNVL.config_class()(**hf_config), state_dict=native, **kwargs)
    official.config._name_or_path = str(path)  # the directory its preprocessor_config.json sits in
    return _decompose(official, spec), tokenizer


def _decompose(official, spec: ModelSpec) -> VisionLanguageModel:
    """Take the official model's parts into the composed module (no copies of the big weights)."""
    from transformers import AutoModelForCausalLM

    config = official.config
    inner = official.model
    family = family_named(config.model_type)
    tower_name, connector_name, llm_name = family.official_parts
    with torch.device("meta"):
        language_model = AutoModelForCausalLM.from_config(config.text_config)
    language_model.model = getattr(inner, llm_name)
    language_model.lm_head = official.lm_head
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit", "hf_quantizer", "quantization_method"):
        if hasattr(official, flag):
            setattr(language_model, flag, getattr(official, flag))
    language_model.config = config.text_config
    info = official_info(config)
    if family.keeps_official_connector:
        projector = getattr(inner, connector_name)
    else:
        projector = _connector_like(config.vision_config.hidden_size, config.text_config.hidden_size,
                                    info.downsample_ratio,
                                    dtype=official.lm_head.weight.dtype if not _is_quantized(official.lm_head)
                                    else None, ps_version=info.ps_version)
        missing, unexpected = projector.load_state_dict(getattr(inner, connector_name).state_dict(), strict=False)
        if unexpected or [k for k in missing if not k.startswith("act")]:
            raise CheckpointError(f"connector weights do not fit: missing {missing}, unexpected {unexpected}")
    if hasattr(inner, "image_newline"):  # LLaVA-NeXT / OneVision: the newline joins the connector
        projector = with_image_newline(projector, inner.image_newline)
    if spec.vision.select_layer is not None:
        info = VLMInfo(**{**info.__dict__, "select_layer": spec.vision.select_layer})
    model = VisionLanguageModel(getattr(inner, tower_name), projector, language_model, info)
    _check_no_meta(model)
    return model


def _from_parts(spec: ModelSpec, kwargs, tokenizer_dir=None):
    """Stage-1 recipe: a vision encoder directory + an LLM directory + a fresh connector."""
    from transformers import AutoModelForCausalLM

    for key, path in (("model.vision.path", spec.vision.path), ("model.llm.path", spec.llm.path)):
        layout = detect_layout(path)
        expected = Layout.VISION if key == "model.vision.path" else Layout.LLM
        if layout is not expected:
            raise CheckpointError(f"{key}={path}: expected a {expected.value} directory, found {layout.value}")
        safetensors_files(path)  # one line for pickle-only, missing or truncated weights
    dtype = kwargs["dtype"]
    vision = load_vision_encoder(spec.vision.path, dtype=dtype, attn_implementation=kwargs["attn_implementation"])
    llm = AutoModelForCausalLM.from_pretrained(spec.llm.path, **kwargs)
    tokenizer = load_tokenizer(tokenizer_dir or spec.llm.path)
    family = family_named(spec.family)
    missing = missing_image_tokens(tokenizer, family)
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        # New rows are random; a checkpoint saves them (see trained_state.resized_embedding_names).
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    vcfg = vision_config(spec.vision.path)
    projector = _connector_like(vcfg.hidden_size, llm.config.hidden_size, spec.connector.downsample_ratio,
                                dtype=dtype)
    info = parts_info(spec, family, vcfg, tokenizer)
    model = VisionLanguageModel(vision, projector, llm, info)
    model.resized_vocab = bool(missing) or tokenizer_dir is not None and len(tokenizer) > _base_vocab(spec.llm.path)
    return model, tokenizer


def _base_vocab(llm_path) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(llm_path).vocab_size


def _connector_like(vision_hidden, text_hidden, ratio, dtype, ps_version: str = "v2") -> Connector:
    connector = Connector(vision_hidden, text_hidden, ratio, ps_version=ps_version)
    return connector.to(dtype) if dtype is not None else connector


def missing_image_tokens(tokenizer, family: Family) -> list[str]:
    """The family's image tokens a (bare LLM's) tokenizer lacks; composing from parts adds them."""
    vocab = tokenizer.get_vocab()
    return [token for token in family.new_tokens if token not in vocab]


def vision_prefix_tokens(vision_config) -> int:
    return VISION_PREFIX_TOKENS.get(vision_config.model_type, 1)


def official_info(config, *, where: str = "") -> VLMInfo:
    """The VLMInfo of a transformers "-hf" config (InternVLConfig, LlavaConfig), read the way its official
    class computes: feature layer, select strategy, pixel shuffle, image-token id."""
    family = family_named(config.model_type)
    vision = config.vision_config
    prefix = f"{where}: " if where else ""
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    if strategy not in SELECT_STRATEGIES:
        raise CheckpointError(f"{prefix}vision_feature_select_strategy={strategy!r} is not one of "
                              f"{', '.join(SELECT_STRATEGIES)}")
    ratio = float(getattr(config, "downsample_ratio", 1.0)) if family.pixel_shuffle else 1.0
    info = VLMInfo(family=family.name, image_token_id=int(getattr(config, family.image_token_field)),
                   select_layer=int(_feature_layer(config, prefix)), downsample_ratio=ratio,
                   tile_size=_first(vision.image_size), patch_size=_first(vision.patch_size),
                   select_strategy=strategy, prefix_tokens=vision_prefix_tokens(vision),
                   ps_version=_ps_version(config, family, prefix), **anyres_fields(config),
                   **base_normalisation(getattr(config, "_name_or_path", None), vision.model_type))
    if family.info_from_config is not None:  # fields its config names otherwise (Idefics3's scale_factor)
        info = dataclasses.replace(info, **family.info_from_config(config))
    side = info.tile_size // info.patch_size
    if info.downsample_ratio != 1.0 and \
            side * side + info.prefix_tokens - (info.select_strategy == "default") != side * side:
        raise CheckpointError(f"{prefix}vision_feature_select_strategy={strategy!r} with a {vision.model_type} "
                              "tower leaves no square patch grid for the pixel shuffle")
    return info


def parts_info(spec: ModelSpec, family: Family, vision_config, tokenizer) -> VLMInfo:
    """Stage 1 from parts: the family's defaults, the tower's sizes; a CLS token (if any) is dropped."""
    select_layer = spec.vision.select_layer
    prefix = vision_prefix_tokens(vision_config)
    return VLMInfo(family=family.name,
                   image_token_id=int(tokenizer.convert_tokens_to_ids(family.image_tokens.context_token)),
                   select_layer=family.default_select_layer if select_layer is None else select_layer,
                   downsample_ratio=float(spec.connector.downsample_ratio),
                   tile_size=_first(vision_config.image_size), patch_size=_first(vision_config.patch_size),
                   select_strategy="default" if prefix else "full", prefix_tokens=prefix,
                   **base_normalisation(spec.vision.path, vision_config.model_type))


def _ps_version(config, family: Family, prefix: str = "") -> str:
    """The pixel-shuffle order: 'v2' (transformers') unless the config carries InternVL-Chat-V1-5's 'v1'
    (vlft.model.internvl_chat maps such a checkpoint with ``ps_version`` kept)."""
    version = getattr(config, PS_VERSION_KEY, "v2") if family.pixel_shuffle else "v2"
    if version not in PS_VERSIONS:
        raise CheckpointError(f"{prefix}ps_version={version!r} is not one of {', '.join(PS_VERSIONS)}")
    return version


def _feature_layer(config, prefix: str = "") -> int:
    layer = getattr(config, "vision_feature_layer", -1)
    if isinstance(layer, (list, tuple)):
        raise CheckpointError(f"{prefix}vision_feature_layer={layer}: several feature layers are not supported")
    return layer


def _first(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _is_quantized(module: nn.Module) -> bool:
    return type(module).__module__.startswith("bitsandbytes")


def _check_no_meta(model: nn.Module) -> None:
    left = [name for name, p in model.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"parameters left on the meta device after loading: {left[:5]}")
