"""What a checkpoint keeps of a model: peft adapters + fully trained tensors + how to rebuild the base.

A checkpoint directory describes itself, so merge/convert/chat need nothing but the directory:

    checkpoint-<step>/
      vlft_checkpoint.json     resolved config (base path, template, tiling), VLM info, step
      llm_adapter/             peft LoRA/DoRA of the LLM (adapter_config.json + adapter_model.safetensors)
      vision_adapter/          peft LoRA of the vision tower, when trained
      trained.safetensors      connector and any fully trained (or resized) tensors, by VLM state-dict name
      tokenizer files
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from vlft.errors import CheckpointError
from vlft.model.layouts import CHECKPOINT_MARKER, read_versioned_record
from vlft.model.vlm import VisionLanguageModel, VLMInfo

FORMAT_VERSION = 1
TRAINED_FILE = "trained.safetensors"
ADAPTERS = {"language_model": "llm_adapter", "vision_tower": "vision_adapter"}


def is_peft(module) -> bool:
    return hasattr(module, "peft_config")


def trained_tensors(model: VisionLanguageModel, extra_names: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Trainable non-LoRA tensors (connector, fully trained parts) plus `extra_names` (e.g. resized embeddings)."""
    state = {}
    for name, param in model.named_parameters():
        if (param.requires_grad and "lora_" not in name) or name in extra_names:
            state[name] = param.detach().to("cpu").contiguous()
    return state


def resized_embedding_names(model: VisionLanguageModel) -> tuple[str, ...]:
    """State-dict names of the LLM's embedding/output matrices when vlft grew the vocabulary (random new rows)."""
    if not getattr(model, "resized_vocab", False):
        return ()
    llm = model.language_model
    wanted = {id(llm.get_input_embeddings().weight), id(llm.get_output_embeddings().weight)}
    return tuple(name for name, p in model.named_parameters() if id(p) in wanted)


def save_trained_state(model: VisionLanguageModel, out_dir: str | Path, *, meta: dict) -> None:
    """Write adapters, trained tensors and `vlft_checkpoint.json` (last: it marks the directory complete)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for part, folder in ADAPTERS.items():
        module = getattr(model, part)
        if is_peft(module):
            module.save_pretrained(str(out_dir / folder), safe_serialization=True)
    save_file(trained_tensors(model, resized_embedding_names(model)), str(out_dir / TRAINED_FILE))
    record = {"format_version": FORMAT_VERSION, "info": asdict(model.info), **meta}
    (out_dir / CHECKPOINT_MARKER).write_text(json.dumps(record, indent=2, default=str))


def read_checkpoint_meta(ckpt_dir: str | Path) -> dict:
    return read_versioned_record(
        Path(ckpt_dir) / CHECKPOINT_MARKER, FORMAT_VERSION,
        f"{ckpt_dir}: not a vlft checkpoint (no {CHECKPOINT_MARKER}); "
        "give a directory written by `vlft train`, e.g. work_dir/checkpoint-100")


def load_trained_state(model: VisionLanguageModel, ckpt_dir: str | Path) -> None:
    """Fill a model built from the same spec (training policy applied) with a checkpoint's weights."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    for part, folder in ADAPTERS.items():
        module = getattr(model, part)
        adapter_file = ckpt_dir / folder / "adapter_model.safetensors"
        if is_peft(module) != adapter_file.is_file():
            raise CheckpointError(f"{ckpt_dir}: {folder} {'missing' if is_peft(module) else 'unexpected'} "
                                  "for this config")
        if adapter_file.is_file():
            result = set_peft_model_state_dict(module, load_file(str(adapter_file)))
            if result.unexpected_keys:
                raise CheckpointError(f"{adapter_file}: tensors that fit no LoRA layer: {result.unexpected_keys[:3]}")
    trained = load_file(str(ckpt_dir / TRAINED_FILE))
    own = model.state_dict()
    unknown = [k for k in trained if k not in own]
    if unknown:
        raise CheckpointError(f"{ckpt_dir / TRAINED_FILE}: tensors this model does not have: {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in trained.items():
            _param_or_buffer(model, name).copy_(tensor)


def info_from_meta(meta: dict) -> VLMInfo:
    return VLMInfo(**meta["info"])


def _param_or_buffer(model, name):
    module_name, _, leaf = name.rpartition(".")
    return getattr(model.get_submodule(module_name), leaf)


def build_from_checkpoint(ckpt_dir: str | Path, *, quantize: bool = True):
    """Rebuild (model, tokenizer, spec) from a checkpoint directory alone: base + policy + saved weights.

    quantize=False reloads a QLoRA run's base in full precision (what merging needs).
    """
    from vlft.config import spec_from_dict
    from vlft.model.adapters import apply_training_policy
    from vlft.model.load import build_vlm, load_tokenizer

    meta = read_checkpoint_meta(ckpt_dir)
    spec = spec_from_dict(meta["config"])
    model, _ = build_vlm(spec.model, quantize=quantize, tokenizer_dir=ckpt_dir)
    apply_training_policy(model, spec.model)
    load_trained_state(model, ckpt_dir)
    return model, load_tokenizer(ckpt_dir), spec
