"""Open any model directory vlft can talk to, with the data pipeline (template + tiling) it was trained with.

    load_for_inference(path) -> (model, pipeline)

What decides the template, system prompt and tiling, by kind of directory:

- training checkpoint (``vlft_checkpoint.json``): the resolved training config it records.
- merged or converted directory (``vlft_model.json``, written by `vlft merge` / `vlft convert`): the run's
  resolved config it records.
- any other transformers-native InternVL or LLaVA directory: the tokenizer's chat template
  (vlft writes its own template's Jinja, which names the template exactly) and ``preprocessor_config.json``
  (``max_patches``, ``crop_to_patches``); without them, the family's default (below).
- original InternVL-chat directory: ``config.json`` (``template``, ``max_dynamic_patch``, ``use_thumbnail``).

Defaults for a directory that says nothing: InternVL on Qwen2 -> ``internvl2_5``, on InternLM2/Llama ->
``internlm2-chat``; LLaVA -> ``vicuna_v1`` (``llama3`` when the tokenizer's BOS is Llama-3's); tiling dynamic,
up to 12 tiles + a thumbnail (LLaVA: pad to square). ``template=`` (``--template``) overrides the guess.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from vlft.errors import CheckpointError, ConfigError
from vlft.families import INTERNVL, Family, family_of_layout
from vlft.infer._generate import check_template_flag
from vlft.model.base_settings import base_tiling
from vlft.model.layouts import Layout

#: The record `vlft merge` / `vlft convert` write beside the weights: the run's template, system prompt, tiling.
MODEL_RECORD = "vlft_model.json"


@dataclass(frozen=True)
class DataSettings:
    """What a model directory says (or we guess) about how its prompts and images were prepared."""

    template: str
    system_prompt: str | None
    tiling: dict
    source: str  # where the settings came from (named in error messages)


def load_for_inference(path: str | Path, *, template: str | None = None, device: str | None = None):
    """(model, pipeline) for chat and eval: the model in eval mode on `device` (default: cuda if present).

    Args:
        path: a training checkpoint, a merged directory, a converted ``hf`` directory or an original
            InternVL-chat directory.
        template: a registered chat template name that replaces the directory's own (or guessed) one.

    Raises:
        CheckpointError: the directory is not a whole vision-language model; the message names it.
    """
    from vlft.data.dataset import pipeline_from_spec
    from vlft.model.layouts import WHOLE_HF_LAYOUTS, Layout, detect_layout

    check_template_flag(template)
    path = Path(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device == "cuda" else "float32"
    layout = detect_layout(path)
    if layout is Layout.CHECKPOINT:
        from vlft.model.base_fingerprint import check_checkpoint_base
        from vlft.model.trained_state import build_from_checkpoint, read_checkpoint_meta

        check_checkpoint_base(read_checkpoint_meta(path), path)
        # bitsandbytes only on a GPU: on CPU a QLoRA run's base is reloaded in full precision
        model, tokenizer, spec = build_from_checkpoint(path, quantize=device == "cuda")
        if template is not None:  # the template's own default system prompt goes with it
            spec.data.template, spec.data.system_prompt = template, None
    elif (path / MODEL_RECORD).is_file():  # written by `vlft merge` / `vlft convert`: the run's own settings
        from vlft.export.hf_files import exported_spec
        from vlft.model.load import build_vlm

        spec = exported_spec(path, dtype=dtype)
        if template is not None:
            spec.data.template, spec.data.system_prompt = template, None
        model, tokenizer = build_vlm(spec.model, quantize=False)
    elif layout in (*WHOLE_HF_LAYOUTS, Layout.INTERNVL_CHAT):
        from vlft.config import spec_from_dict
        from vlft.model.load import build_vlm, load_tokenizer

        tokenizer = load_tokenizer(path)
        settings = data_settings(path, layout, tokenizer, template=template)
        family = family_of_layout(layout)
        raw = {
            "model": {"family": family.name, "path": str(path), "llm": {"train": "frozen"},
                      "connector": {"downsample_ratio": family.default_downsample_ratio, "train": False},
                      "dtype": dtype},
            "data": {"template": settings.template, "system_prompt": settings.system_prompt,
                     "tiling": settings.tiling, "max_length": 1 << 20},
        }
        try:
            spec = spec_from_dict(raw)
        except ConfigError as exc:
            raise CheckpointError(f"{path}: {exc} (settings from {settings.source})") from None
        model, tokenizer = build_vlm(spec.model, quantize=False)
    else:
        raise CheckpointError(f"{path}: a {layout.value} directory is not a whole vision-language model; "
                              "give a training checkpoint, a merged or converted directory, or an InternVL-chat one")
    llm = model.language_model
    if not (getattr(llm, "is_loaded_in_4bit", False) or getattr(llm, "is_loaded_in_8bit", False)):
        model.to(device)  # bitsandbytes places quantized weights itself and refuses .to()
    model.eval()
    return model, pipeline_from_spec(spec, tokenizer, model.info)


def data_settings(path: Path, layout, tokenizer, *, template: str | None = None) -> DataSettings:
    """Template, system prompt and tiling for an inference directory (see the module docstring)."""
    from vlft.data.templates import get_template
    from vlft.model.layouts import Layout, read_config

    config = read_config(path)
    if layout is Layout.INTERNVL_CHAT:
        settings = _from_internvl_chat(config, path)
    else:
        settings = _from_hf(path, layout, config, tokenizer)
    if template is not None:
        settings = DataSettings(template, None, settings.tiling, "--template")
    try:
        get_template(settings.template)
    except KeyError as exc:
        raise CheckpointError(f"{path}: chat template from {settings.source}: {exc}; choose one with --template") \
            from None
    return settings


def _from_internvl_chat(config: dict, path: Path) -> DataSettings:
    tiling, _ = base_tiling(path, Layout.INTERNVL_CHAT, config)
    template = config.get("template") or INTERNVL.default_template(_text_type(config), None)
    return DataSettings(template, None, tiling, f"{path / 'config.json'}")


def _from_hf(path: Path, layout, config: dict, tokenizer) -> DataSettings:
    family: Family = family_of_layout(layout)
    template, system, source = _template_from_tokenizer(tokenizer)
    if template is None:
        template, system = family.default_template(_text_type(config), tokenizer), None
        source = f"the default for {family.name} on {_text_type(config) or 'this LLM'}"
    tiling, _ = base_tiling(path, layout, config)
    return DataSettings(template, system, tiling, source)


def _template_from_tokenizer(tokenizer) -> tuple[str | None, str | None, str]:
    """(template, system prompt, source) read from the tokenizer's chat template, or (None, None, "")."""
    from vlft.data.templates import TEMPLATES

    jinja = getattr(tokenizer, "chat_template", None)
    if isinstance(jinja, dict):
        jinja = jinja.get("default")
    if not jinja:
        return None, None, ""
    for name, template in TEMPLATES.items():
        if jinja == template.jinja:
            return name, None, "the tokenizer's chat template"
    # vlft's own Jinja with a replaced system prompt: same shape, another `set system` literal
    found = re.search(r"\{%- else -%\}\{%- set system = (\"(?:[^\"\\]|\\.)*\") -%\}", jinja)
    if found:
        system = json.loads(found.group(1))
        for name, template in TEMPLATES.items():
            if jinja.replace(found.group(1), json.dumps(template.default_system, ensure_ascii=False)) == template.jinja:
                return name, system, "the tokenizer's chat template"
    # a foreign template: recognise the format by its markers
    if "<|im_start|>" in jinja:
        return ("internlm2-chat" if "<s>" in jinja else "internvl2_5"), None, "the tokenizer's chat template (chatml)"
    if "<|start_header_id|>" in jinja:
        return "llama3", None, "the tokenizer's chat template (llama3)"
    if "USER:" in jinja and "ASSISTANT:" in jinja:
        return "vicuna_v1", None, "the tokenizer's chat template (vicuna)"
    return None, None, ""


def _text_type(config: dict) -> str:
    return (config.get("text_config") or config.get("llm_config") or {}).get("model_type", "")

