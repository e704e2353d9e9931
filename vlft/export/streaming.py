"""Merge a training checkpoint into its base tensor by tensor, so only one tensor and one LoRA layer are in memory.

The base's safetensors are read one tensor at a time (an InternVL-chat base is mapped to native names on
the way, see vlft.model.internvl_chat.iter_chat_to_native); each tensor is cast to the dtype the
in-memory merge loads the base in, a LoRA target gets peft's own merge of that one layer, a trained tensor
(connector, resized embedding) replaces the base's, and the result goes to the shard writer. The output
equals, tensor for tensor, what `merge_training_checkpoint` + `write_native` write (tests/export).

Not streamed (the caller falls back to the in-memory merge): a base composed from parts, and adapters
using peft features that change more than the target's weight (``lora_bias``, ``modules_to_save``).
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from vlft.errors import CheckpointError
from vlft.families import family_named, family_of_layout
from vlft.model.internvl_chat import chat_config_to_native, iter_chat_to_native
from vlft.model.layouts import WHOLE_HF_LAYOUTS, Layout, detect_layout, safetensors_files
from vlft.model.trained_state import ADAPTERS, TRAINED_FILE

#: Keys transformers 5 saves for the official classes -> vlft's (legacy "-hf") state-dict names.
_SAVED_PREFIXES = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                   ("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector."),
                   # LLaVA-NeXT / OneVision keep the newline beside the projector; vlft's connector holds it
                   # (transformers saves it top-level, as the hub's checkpoints have it)
                   ("model.image_newline", "multi_modal_projector.image_newline"),
                   ("image_newline", "multi_modal_projector.image_newline"))
_EMBED = "language_model.model.embed_tokens.weight"
_LM_HEAD = "language_model.lm_head.weight"
_PEFT_PREFIX = "base_model.model."


#: Vision towers whose canonical checkpoint keys nest under `vision_model.` (llava-hf on the Hub, vLLM, older
#: transformers); transformers 5 flattens them in memory and its loader accepts both.
NESTED_VISION_TYPES = ("clip_vision_model", "siglip_vision_model")


class NotStreamable(Exception):
    """This checkpoint needs the in-memory merge (the message says why)."""


def streamable_base(meta: dict) -> Path:
    """The base directory when it can be streamed; NotStreamable otherwise."""
    path = meta["config"]["model"].get("path")
    if path is None:
        raise NotStreamable("the base is composed from parts")
    layout = detect_layout(path)
    if layout not in (*WHOLE_HF_LAYOUTS, Layout.INTERNVL_CHAT):
        raise NotStreamable(f"a {layout.value} base")
    return Path(path)


def check_streamable(checkpoint: Path) -> None:
    """NotStreamable when an adapter or a trained tensor needs more than a per-tensor merge."""
    from safetensors import safe_open

    for folder in ADAPTERS.values():
        config_file = checkpoint / folder / "adapter_config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text())
            if config.get("peft_type", "LORA") != "LORA" or config.get("lora_bias") or config.get("modules_to_save"):
                raise NotStreamable(f"{config_file}: not a plain LoRA/DoRA adapter")
    with safe_open(str(checkpoint / TRAINED_FILE), framework="pt") as trained:
        for key in trained.keys():
            _trained_name(key)


def base_configs(base: Path, info) -> tuple[object, object]:
    """(text_config, vision_config) the in-memory merge's model would carry, from the base's config.json."""
    from transformers import AutoConfig, InternVLConfig

    if detect_layout(base) is Layout.INTERNVL_CHAT:
        chat_config = json.loads((base / "config.json").read_text())
        config = InternVLConfig(**chat_config_to_native(chat_config, image_token_id=info.image_token_id,
                                                        allow_ps_v1=True))
    else:
        config = AutoConfig.from_pretrained(str(base))
    return config.text_config, config.vision_config


# ------------------------------------------------------------------------------------------------
# Reading the base


def _iter_files(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Each file's tensors in order, each from a handle of its own.

    A safetensors handle maps its file, and every page read through it stays in the process's RSS until
    the handle closes; reading a whole 2 GB base shard through one handle costs 2 GB. The tensor keeps only
    its own pages mapped after its handle closes, until the shard writer has written it.
    """
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            names = list(handle.keys())
        for name in names:
            with safe_open(str(file), framework="pt") as handle:
                tensor = handle.get_tensor(name)
            yield name, tensor


def base_items(base: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(vlft state-dict name, tensor) of the base as stored, one tensor at a time.

    A tied LM head is absent from an "-hf" base (merged_items adds it from the final embeddings);
    iter_chat_to_native adds it for an InternVL-chat base.
    """
    files = safetensors_files(base)
    if detect_layout(base) is Layout.INTERNVL_CHAT:
        chat_config = json.loads((base / "config.json").read_text())
        yield from iter_chat_to_native(_iter_files(files), chat_config)
        return
    prefixes = family_of_layout(detect_layout(base)).stored_prefixes or _SAVED_PREFIXES
    for key, tensor in _iter_files(files):
        for saved, ours in prefixes:
            if key.startswith(saved):
                key = ours + key.removeprefix(saved)
                break
        yield key, tensor


# ------------------------------------------------------------------------------------------------
# One LoRA layer, merged by peft


class _Adapter:
    """One part's peft adapter: its LoraConfig and its tensors grouped by target module path."""

    def __init__(self, folder: Path):
        from peft import LoraConfig
        from safetensors.torch import load_file

        self.config = LoraConfig.from_pretrained(str(folder))  # check_streamable vetted it
        self.config.task_type = None  # the one-layer holder is no CausalLM
        self.by_module: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in load_file(str(folder / "adapter_model.safetensors")).items():
            path = key.removeprefix(_PEFT_PREFIX)
            module, _, rest = path.partition(".lora_")
            if not rest:
                raise NotStreamable(f"{folder}: adapter tensor {key} is no LoRA weight")
            self.by_module.setdefault(_flat_vision(module), {})[key] = tensor

    def merge(self, module: str, weight: torch.Tensor) -> torch.Tensor:
        """The weight of `module` (path in the part) with its LoRA merged by peft's merge_and_unload."""
        from peft import get_peft_model, set_peft_model_state_dict

        tensors = self.by_module.pop(module)
        saved_path = next(iter(tensors)).removeprefix(_PEFT_PREFIX).partition(".lora_")[0]
        with warnings.catch_warnings():  # library deprecation notes say nothing to a user merging
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(_holder(saved_path, weight), self.config)
            result = set_peft_model_state_dict(peft_model, tensors)
            if result.unexpected_keys:
                raise CheckpointError(f"adapter tensors that fit no LoRA layer: {result.unexpected_keys[:3]}")
            merged = peft_model.merge_and_unload()
        return merged.get_submodule(saved_path).weight.detach()


def _holder(path: str, weight: torch.Tensor) -> nn.Module:
    """A module tree holding only an nn.Linear at `path` (so peft's target matching sees the real name)."""
    root = parent = nn.Module()
    *parents, leaf = path.split(".")
    for piece in parents:
        child = nn.Module()
        parent.add_module(piece, child)
        parent = child
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta", dtype=weight.dtype)
    linear.weight = nn.Parameter(weight, requires_grad=False)
    parent.add_module(leaf, linear)
    return root


def _flat_vision(path: str) -> str:
    return path.removeprefix("vision_model.")


# ------------------------------------------------------------------------------------------------
# The merged stream


def merged_items(checkpoint: Path, base: Path, *, model_dtype: torch.dtype, vision_type: str, family: str,
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """(exported name, tensor) of the merged model: base tensors in `model_dtype`, LoRA folded, trained ones in."""
    from safetensors import safe_open

    adapters = {part: _Adapter(checkpoint / folder) for part, folder in ADAPTERS.items()
                if (checkpoint / folder / "adapter_model.safetensors").is_file()}
    nest = vision_type in NESTED_VISION_TYPES
    with safe_open(str(checkpoint / TRAINED_FILE), framework="pt") as trained_file:
        trained = {_trained_name(key): key for key in trained_file.keys()}
        embed = None
        keep_embed = not _stores_head(base)  # the head is written from the final embeddings at the end
        seen = set()
        for name, tensor in base_items(base):
            name = _flat_name(name)
            if name in seen:
                _stored_twice(base, name)
            if name in trained:
                key = trained.pop(name)
                if tuple(trained_file.get_slice(key).get_shape()) != tuple(tensor.shape):
                    raise CheckpointError(f"{checkpoint / TRAINED_FILE}: {key} has shape "
                                          f"{tuple(trained_file.get_slice(key).get_shape())}, the base's "
                                          f"{name} {tuple(tensor.shape)}; was this checkpoint trained on "
                                          f"{base}?")
                tensor = trained_file.get_tensor(key)
            if tensor.is_floating_point():
                tensor = tensor.to(model_dtype)
            part, _, inner = name.partition(".")
            module = inner.removesuffix(".weight")
            if part in adapters and inner.endswith(".weight") and module in adapters[part].by_module:
                tensor = adapters[part].merge(module, tensor)
            if name == _EMBED and keep_embed:
                embed = tensor
            seen.add(name)
            yield export_name(name, nest, family), tensor
        if _LM_HEAD not in seen and embed is not None:  # tied in the base; the written config unties it
            yield export_name(_LM_HEAD, nest, family), embed
        if trained:
            raise CheckpointError(f"{checkpoint / TRAINED_FILE}: tensors the base does not have: "
                                  f"{sorted(trained.values())[:3]}")
    left = {part: sorted(adapter.by_module)[:3] for part, adapter in adapters.items() if adapter.by_module}
    if left:
        raise CheckpointError(f"{checkpoint}: LoRA layers with no weight in the base: {left}")


def _stored_twice(base: Path, name: str) -> None:
    files = ", ".join(file.name for file in safetensors_files(base))
    raise CheckpointError(f"{base}: tensor {name} is stored twice in the base's weight files ({files}): the "
                          "directory holds the weights of more than one model (another model copied over it?); "
                          "restore the base the checkpoint was trained on")


def _stores_head(base: Path) -> bool:
    """Whether the base's files hold an LM head (read from the safetensors headers only)."""
    from safetensors import safe_open

    if detect_layout(base) is Layout.INTERNVL_CHAT:
        return True  # iter_chat_to_native adds a tied head itself
    heads = {_LM_HEAD, "lm_head.weight"}
    for file in safetensors_files(base):
        with safe_open(str(file), framework="pt") as handle:
            if heads & set(handle.keys()):
                return True
    return False


def _trained_name(key: str) -> str:
    """A trained.safetensors key (saved from the peft-wrapped model) as a plain state-dict name."""
    for part in ADAPTERS:
        key = key.replace(f"{part}.{_PEFT_PREFIX}", f"{part}.")
    if ".base_layer." in key or "lora_" in key or "modules_to_save" in key:
        raise NotStreamable(f"trained tensor {key} belongs to a LoRA layer")
    return _flat_name(key)


def _flat_name(name: str) -> str:
    if name.startswith("vision_tower.vision_model."):
        return "vision_tower." + name.removeprefix("vision_tower.vision_model.")
    return name


def export_name(name: str, nest: bool, family: str) -> str:
    """A vlft state-dict name as the -hf layout stores it: a family's own stored names where it has them
    (Family.stored_prefixes), a CLIP/SigLIP tower (nest=True) in the canonical ``vision_tower.vision_model.*``
    layout, the AnyRes connector's newline as the top-level ``image_newline`` that LLaVA-NeXT / OneVision load
    (as ``model.image_newline``)."""
    for stored, ours in family_named(family).stored_prefixes:
        if name.startswith(ours):
            return stored + name.removeprefix(ours)
    if nest and name.startswith("vision_tower."):
        return "vision_tower.vision_model." + name.removeprefix("vision_tower.")
    if name == "multi_modal_projector.image_newline":
        return "image_newline"
    return name
