"""Decide what trains: freeze parts, wrap the LLM (and optionally the vision tower) with peft LoRA/DoRA."""
from __future__ import annotations

import re

from torch import nn

from vlft.errors import ConfigError
from vlft.model.vlm import VisionLanguageModel
from vlft.specs import LoraSpec, ModelSpec

#: The LLM's projections LoRA wraps by default, in transformers' module names: those the LLM has, so one list
#: covers separate q/k/v and gate/up (Qwen2/3, Llama, InternLM2 loaded as Llama) and Phi-3's fused
#: ``qkv_proj`` / ``gate_up_proj`` (which transformers keeps fused, as the InternVL-chat layout does).
LLM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj",
                   "down_proj")
DEFAULT_VISION_TARGETS = {
    "internvl_vision": ["q_proj", "k_proj", "v_proj", "projection_layer", "fc1", "fc2"],
    "clip_vision_model": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "siglip_vision_model": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


def apply_training_policy(model: VisionLanguageModel, spec: ModelSpec) -> VisionLanguageModel:
    """Freeze everything, then unfreeze / wrap each part as the spec says. Mutates and returns the model."""
    model.requires_grad_(False)
    model.multi_modal_projector.requires_grad_(spec.connector.train)

    if spec.llm.train == "lora":
        llm = model.language_model
        if getattr(llm, "is_loaded_in_4bit", False) or getattr(llm, "is_loaded_in_8bit", False):
            from peft import prepare_model_for_kbit_training

            llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=spec.gradient_checkpointing)
        model.language_model = wrap_with_lora(llm, spec.llm.lora, default_llm_targets(llm), "model.llm.lora",
                                              task_type="CAUSAL_LM")
    elif spec.llm.train == "full":
        model.language_model.requires_grad_(True)

    if spec.vision.train == "lora":
        vision_type = model.vision_tower.config.model_type
        model.vision_tower = wrap_with_lora(model.vision_tower, spec.vision.lora,
                                            DEFAULT_VISION_TARGETS.get(vision_type, ["q_proj", "v_proj"]),
                                            "model.vision.lora")
    elif spec.vision.train == "full":
        model.vision_tower.requires_grad_(True)

    if spec.gradient_checkpointing:
        enable_checkpointing(model.language_model)
    return model


def enable_checkpointing(llm: nn.Module) -> None:
    """Activation checkpointing of every decoder layer, reentrant: on the same step torch's non-reentrant kind
    adds 1.18x as much to the peak, with equal gradients (tools/bench/bench_checkpointing.py). Reentrant
    checkpointing passes gradients only to layer inputs that require them, so the embeddings' output is made
    to (as peft and transformers do for adapters): text-only batches still train the LoRA layers."""
    enable = getattr(llm, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": True})
    else:  # transformers before activation_checkpointing_enable
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    if not getattr(llm, "_require_grads_hooks", None) and getattr(llm, "_require_grads_hook", None) is None:
        llm.enable_input_require_grads()


def default_llm_targets(llm: nn.Module) -> list[str]:
    """The LLM_PROJECTIONS this LLM has (peft matches them as the last name component)."""
    available = linear_layer_names(llm)
    return [name for name in LLM_PROJECTIONS if name in available]


def lora_config(lora: LoraSpec, default_targets: list[str], task_type: str | None = None):
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules or default_targets), use_dora=lora.use_dora,
                      task_type=task_type)


def wrap_with_lora(module: nn.Module, lora: LoraSpec, default_targets: list[str], key: str,
                   task_type: str | None = None):
    """peft's LoRA on one part only, so targets can never catch another part's layers."""
    from peft import get_peft_model

    available = linear_layer_names(module)
    if not (lora.target_modules or default_targets):
        raise ConfigError(f"{key}.target_modules: this part has none of vlft's default LoRA targets; name the "
                          f"layers to train, from: {', '.join(sorted(available))}")
    config = lora_config(lora, default_targets, task_type)
    unmatched = [t for t in config.target_modules if t not in available]
    if unmatched:
        raise ConfigError(f"{key}.target_modules: {sorted(unmatched)} match no linear layer of this part; "
                          f"available: {', '.join(sorted(available))}")
    return get_peft_model(module, config)


def linear_layer_names(module: nn.Module) -> set[str]:
    """Last name component of every Linear-like layer (what peft matches a plain target name against)."""
    names = set()
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear) or re.search(r"Linear(4bit|8bitLt)$", type(child).__name__):
            names.add(name.rsplit(".", 1)[-1])
    return names
