"""`vlft convert CKPT OUT --to lora`: the run's LLM LoRA as a PEFT adapter that a server applies to the base
unmerged (``vllm serve BASE --enable-lora --lora-modules name=OUT``).

Servers load an adapter by the module names of the base as they load it, and only the LLM's LoRA: no
``modules_to_save``, no vision-tower or connector weights. So the adapter is renamed into the base's own
layout, and a run that changed anything else (the connector, the vision tower, the vocabulary, fully
trained tensors) is refused with one line, since the base on the server would lack those changes.

    transformers-native base (-hf)      model.language_model.layers.N.self_attn.q_proj ...   (the official
                                        class's module names; vLLM maps them as it maps the weights)
    InternVL-chat base, Qwen2 / Llama   language_model.model.layers.N.self_attn.q_proj ...
    InternVL-chat base, InternLM2       language_model.model.layers.N.attention.wqkv / wo, feed_forward.w1-3;
                                        the q/k/v LoRAs become one LoRA of the fused wqkv

The fused wqkv LoRA is exact: A is the q, k, v A's stacked (rank 3r), B is block-diagonal with its rows in
wqkv's per-KV-head grouping. Every module gets that rank (zero-padded, alpha scaled alike), because vLLM
reads one rank per adapter. The verification applies the adapter with peft to transformers' official class
and compares logits with the merged model (-hf base), or, for an InternVL-chat base whose remote code
cannot run here, merges the adapter into the base's own tensors and compares them with the merged model's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from vlft.config import spec_from_dict
from vlft.errors import CheckpointError
from vlft.export.hf_files import chat_training_fields, export_template
from vlft.export.merge import merge_training_checkpoint
from vlft.export.staging import check_output, staged_output
from vlft.export.target_interface import ExportTarget
from vlft.export.verify import VerifyError, training_prompt
from vlft.export.writers import iter_safetensors_dir
from vlft.families import Family, family_of_layout
from vlft.model.internvl_chat import Heads, fused_rule, iter_chat_to_native, llm_arch_of_chat_config, llm_entry
from vlft.model.internvl_chat.keys import native_to_chat_slot
from vlft.model.base_fingerprint import check_checkpoint_base
from vlft.model.layouts import CHECKPOINT_MARKER, WHOLE_HF_LAYOUTS, Layout, detect_layout
from vlft.model.trained_state import info_from_meta, read_checkpoint_meta

LLM_ADAPTER_DIR = "llm_adapter"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CHAT_TEMPLATE = "chat_template.jinja"
#: vlft's name of the LLM inside the VLM, and the prefix peft puts in front of a saved module name.
_VLFT_LLM = "language_model."
_PEFT_PREFIX = "base_model.model."
_FIX = ("use --to hf (the merged model), or train with model.connector.train=False and model.vision.train=frozen "
        "to get adapters a server can apply")


@dataclass(frozen=True)
class LoraExport:
    """What `--to lora` wrote: where, for which base and layout, how many LoRA modules, at which rank."""

    out: Path
    base: str
    layout: str          # "hf" | "internvl-chat"
    modules: int
    rank: int
    max_abs_logit_diff: float | None = None
    max_abs_weight_diff: float | None = None

    def summary(self) -> str:
        line = (f"lora: {self.modules} LoRA modules (rank {self.rank}) in the {self.layout} base's names; serve with "
                f"`vllm serve {self.base} --enable-lora --max-lora-rank {_vllm_rank(self.rank)} "
                f"--lora-modules NAME={self.out} --chat-template {self.out / CHAT_TEMPLATE}`")
        if self.max_abs_logit_diff is not None:
            line += f"; verify: peft on the official class = merged logits (max |Δ| {self.max_abs_logit_diff:.1e})"
        if self.max_abs_weight_diff is not None:
            line += f"; verify: base + adapter = merged weights (max |Δ| {self.max_abs_weight_diff:.1e})"
        return line


def _vllm_rank(rank: int) -> int:
    """vLLM's --max-lora-rank takes one of its listed sizes: the smallest one that holds ``rank``."""
    return next((size for size in (8, 16, 32, 64, 128, 256, 320, 512) if size >= rank), rank)


# ------------------------------------------------------------------------------------------------
# What a servable adapter needs from the run


def servable_problem(spec, checkpoint: Path) -> str | None:
    """Why this checkpoint's training cannot travel as an LLM-only LoRA adapter (one line), or None."""
    from safetensors import safe_open

    model = spec.model
    changed = []
    if model.connector.train:
        changed.append("the connector")
    if model.vision.train != "frozen":
        changed.append(f"the vision tower ({model.vision.train})")
    if changed:
        return f"--to lora: training also changed {' and '.join(changed)}, which an LLM LoRA adapter cannot carry; {_FIX}"
    if model.llm.train != "lora":
        return f"--to lora: the LLM was trained {model.llm.train!r}, not with LoRA, so there is no adapter; use --to hf"
    if model.path is None:
        return ("--to lora: the model was composed from a vision encoder and an LLM, so no server holds its base; "
                "use --to hf")
    if model.llm.lora is not None and model.llm.lora.use_dora:
        return "--to lora: DoRA adapters are not served by vLLM (LoRA only); use --to hf"
    trained = checkpoint / "trained.safetensors"
    if trained.is_file():
        with safe_open(str(trained), framework="pt") as handle:
            names = list(handle.keys())
        if names:
            return (f"--to lora: training also changed {names[0]}" + (f" and {len(names) - 1} more tensors"
                                                                        if len(names) > 1 else "")
                    + f" (e.g. a grown vocabulary), which an LLM LoRA adapter cannot carry; {_FIX}")
    if not (checkpoint / LLM_ADAPTER_DIR / ADAPTER_WEIGHTS).is_file():
        return f"--to lora: {checkpoint / LLM_ADAPTER_DIR / ADAPTER_WEIGHTS} is missing; the checkpoint is incomplete"
    return None


# ------------------------------------------------------------------------------------------------
# Module names


@dataclass(frozen=True)
class _LoraModule:
    """One LoRA module as trained: its vlft name (``language_model.model.layers.0.self_attn.q_proj``), A, B."""

    name: str
    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]


def _trained_modules(adapter: dict[str, torch.Tensor], where: Path) -> dict[str, _LoraModule]:
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in adapter.items():
        if not key.startswith(_PEFT_PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise CheckpointError(f"{where}: {key!r} is no LoRA A/B weight (embeddings or modules_to_save cannot be "
                                  f"served unmerged); use --to hf")
        module, _, kind = key.removeprefix(_PEFT_PREFIX).rpartition(".lora_")
        pairs.setdefault(_VLFT_LLM + module, {})[kind[0]] = tensor
    modules = {}
    for name, pair in pairs.items():
        if set(pair) != {"A", "B"} or ".layers." not in name:
            raise CheckpointError(f"{where}: the LoRA of {name} is not a decoder-layer A/B pair; use --to hf")
        modules[name] = _LoraModule(name, pair["A"], pair["B"])
    return modules


def _hf_name(name: str, family: Family) -> str:
    """vlft's LLM module name -> the official -hf class's (``model.language_model.layers...``; the LLM's
    attribute is the family's, ``text_model`` for Idefics3 / SmolVLM)."""
    return f"model.{family.official_parts[2]}." + name.removeprefix(_VLFT_LLM + "model.")


def _pad_rank(module: _LoraModule, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A, B zero-padded to ``rank`` (B @ A is unchanged)."""
    r = module.a.shape[0]
    a = torch.cat([module.a, module.a.new_zeros(rank - r, module.a.shape[1])]) if rank > r else module.a
    b = torch.cat([module.b, module.b.new_zeros(module.b.shape[0], rank - r)], dim=1) if rank > r else module.b
    return a, b


def _chat_modules(modules: dict[str, _LoraModule], llm_arch: str, heads: dict[str, int]
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The LoRA modules in InternVL-chat names. Where the LLM's registry entry fuses several transformers
    tensors into one chat tensor (InternLM2's q/k/v into ``wqkv``), their LoRAs become one LoRA of the fused
    tensor: A stacked, B block-diagonal, its rows joined by the entry's own rule (as the weights are)."""
    entry = llm_entry(llm_arch)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    fused: dict[str, dict[int, _LoraModule]] = {}
    for name, module in modules.items():
        chat, slot = native_to_chat_slot(name + ".weight", llm_arch)
        chat = chat.removesuffix(".weight")
        if slot is None:
            out[chat] = (module.a, module.b)
        else:
            fused.setdefault(chat, {})[slot] = module
    for chat, parts in fused.items():
        rule = fused_rule(chat + ".weight", entry)
        if set(parts) != set(range(len(rule.parts))):
            trained = ", ".join(rule.parts[slot].rsplit(".", 2)[-2] for slot in sorted(parts))
            wanted = ", ".join(part.rsplit(".", 2)[-2] for part in rule.parts)
            raise CheckpointError(f"--to lora: {entry.architecture} fuses {wanted} into {chat}, so their LoRAs must "
                                  f"come together, but the run trained only {trained}; set "
                                  "model.llm.lora.target_modules to all of them, or use --to hf")
        ordered = [parts[slot] for slot in range(len(rule.parts))]
        r = ordered[0].a.shape[0]
        a = torch.cat([module.a for module in ordered])  # [n*r, in]

        def block(module: _LoraModule, slot: int) -> torch.Tensor:
            b = module.b.new_zeros(module.b.shape[0], len(ordered) * r)
            b[:, slot * r:(slot + 1) * r] = module.b
            return b

        out[chat] = (a, rule.join([block(module, slot) for slot, module in enumerate(ordered)], Heads(**heads)))
    return out


# ------------------------------------------------------------------------------------------------
# Export


def export_lora(checkpoint: str | Path, out: str | Path, *, verify: bool | None = None, overwrite: bool = False,
                log=print) -> LoraExport:
    """Write CHECKPOINT's LLM LoRA as a PEFT adapter for its base (see the module docstring).

    Args:
        checkpoint: a training checkpoint (`vlft train`'s ``checkpoint-N``), trained with the connector and
            the vision tower frozen.
        verify: None or True: check the adapter against the merged model (logits for a -hf base, weights for
            an InternVL-chat base); False: skip.
    Raises CheckpointError (one line) for a checkpoint whose training an LLM adapter cannot carry.
    """
    from safetensors.torch import load_file

    checkpoint, out = Path(checkpoint), Path(out)
    if not (checkpoint / CHECKPOINT_MARKER).is_file():
        raise CheckpointError(f"--to lora: {checkpoint} is not a training checkpoint (no {CHECKPOINT_MARKER}); the "
                              "adapter comes from `vlft train`'s checkpoint-N, before any merge")
    meta = read_checkpoint_meta(checkpoint)
    check_checkpoint_base(meta, checkpoint)
    spec = spec_from_dict(meta["config"])
    problem = servable_problem(spec, checkpoint)
    if problem:
        raise CheckpointError(problem)
    base = Path(spec.model.path)
    layout = detect_layout(base)
    adapter_dir = checkpoint / LLM_ADAPTER_DIR
    trained_config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    modules = _trained_modules(load_file(str(adapter_dir / ADAPTER_WEIGHTS)), adapter_dir / ADAPTER_WEIGHTS)
    check_output(out, overwrite=overwrite, sources=[checkpoint])

    if layout is Layout.INTERNVL_CHAT:
        chat_config = json.loads((base / "config.json").read_text())
        llm_arch = llm_arch_of_chat_config(chat_config)
        named = _chat_modules(modules, llm_arch, _heads(chat_config["llm_config"]))
        layout_name = "internvl-chat"
    elif layout in WHOLE_HF_LAYOUTS:
        family = family_of_layout(layout)
        named = {_hf_name(name, family): (m.a, m.b) for name, m in modules.items()}
        layout_name = "hf"
    else:
        raise CheckpointError(f"--to lora: the base {base} is a {layout.value} directory, which no server loads as a "
                              "VLM; use --to hf")

    rank = max(a.shape[0] for a, _ in named.values())
    r = trained_config["r"]
    scale = trained_config["lora_alpha"] / (r ** 0.5 if trained_config.get("use_rslora") else r)
    tensors = {}
    for name, (a, b) in sorted(named.items()):
        a, b = _pad_rank(_LoraModule(name, a, b), rank)
        tensors[f"{_PEFT_PREFIX}{name}.lora_A.weight"] = a.contiguous()
        tensors[f"{_PEFT_PREFIX}{name}.lora_B.weight"] = b.contiguous()
    config = {key: value for key, value in trained_config.items() if key not in ("rank_pattern", "alpha_pattern")}
    config.update(r=rank, lora_alpha=scale * rank, use_rslora=False, target_modules=sorted(named),
                  modules_to_save=None, base_model_name_or_path=str(base.resolve()), task_type=None,
                  inference_mode=True, rank_pattern={}, alpha_pattern={})

    from safetensors.torch import save_file

    result = LoraExport(out=out, base=str(base), layout=layout_name, modules=len(named), rank=rank)
    with staged_output(out, overwrite=overwrite, sources=[checkpoint], log=log) as staging:
        save_file(tensors, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (staging / "vlft_lora.json").write_text(json.dumps(
            {"format_version": 1, "source": str(checkpoint.resolve()), "step": meta.get("step"),
             "base_model": str(base), "layout": layout_name, "template": spec.data.template,
             "system_prompt": spec.data.system_prompt,
             "mm_processor_kwargs": _tiling_overrides(spec, meta, base, layout_name)}, indent=2) + "\n")
        # The training template, for the server's --chat-template: the base's own template may differ.
        template = export_template(spec, spec.model.family, layout=layout_name)
        (staging / CHAT_TEMPLATE).write_text(template.jinja + "\n")
        if verify is not False:
            merged = merge_training_checkpoint(checkpoint)
            if layout_name == "hf":
                diff = verify_lora_logits(staging, base, merged)
                result = LoraExport(**{**result.__dict__, "max_abs_logit_diff": diff})
            else:
                diff = verify_lora_weights(staging, base, merged)
                result = LoraExport(**{**result.__dict__, "max_abs_weight_diff": diff})
    log(result.summary())
    overrides = json.loads((out / "vlft_lora.json").read_text())["mm_processor_kwargs"]
    if overrides:
        log(f"note: training tiled otherwise than the base's config.json says; add --mm-processor-kwargs "
            f"'{json.dumps(overrides)}' to `vllm serve` so images are cut as in training")
    return result


def _tiling_overrides(spec, meta, base: Path, layout_name: str) -> dict:
    """The run's tiling where it differs from what the base's config tells a server (vLLM's
    ``--mm-processor-kwargs``): the adapter is served on the base's files, not on an export's."""
    if layout_name != "internvl-chat":
        return {}
    fields = chat_training_fields(spec, info_from_meta(meta))
    config = json.loads((base / "config.json").read_text())
    keys = ("dynamic_image_size", "min_dynamic_patch", "max_dynamic_patch")
    return {key: fields[key] for key in keys if config.get(key) != fields[key]}


def _heads(llm_config: dict) -> dict[str, int]:
    heads, hidden = llm_config["num_attention_heads"], llm_config["hidden_size"]
    return {"num_heads": heads, "num_kv_heads": llm_config.get("num_key_value_heads", heads),
            "head_dim": llm_config.get("head_dim") or hidden // heads}


# ------------------------------------------------------------------------------------------------
# Verification


def verify_lora_logits(adapter: Path, base: Path, merged, *, atol: float = 1e-5) -> float:
    """peft applies the adapter to transformers' official class loaded from the base; its logits on the
    verification prompt must equal the merged model's (fp32, eager) within ``atol``."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    model = merged.model.float().eval()
    prompt = training_prompt(merged.spec, merged.tokenizer, model.info)
    ids = torch.tensor([prompt.input_ids])
    with torch.no_grad():
        want = model(input_ids=ids, **prompt.image_inputs).logits[0].float()
    official = AutoModelForImageTextToText.from_pretrained(str(base), dtype=torch.float32, attn_implementation="eager")
    served = PeftModel.from_pretrained(official, str(adapter)).eval()
    loaded = sum(1 for name, _ in served.named_parameters() if "lora_A" in name)
    if loaded != len(json.loads((adapter / ADAPTER_CONFIG).read_text())["target_modules"]):
        raise VerifyError(f"{adapter}: peft found {loaded} of the adapter's modules in the official class")
    with torch.no_grad():
        got = served(input_ids=ids, **prompt.official_inputs(model.info.family)).logits[0].float()
    diff = float((got - want).abs().max())
    if not diff <= atol:
        raise VerifyError(f"{adapter}: the adapter on {type(official).__name__} gives other logits than the merged "
                          f"model: max |Δ| = {diff:.2e} > {atol:.0e}")
    return diff


def verify_lora_weights(adapter: Path, base: Path, merged, *, atol: float = 1e-5) -> float:
    """Base tensors (InternVL-chat names) + scale * B @ A, read back through vlft's chat -> native converter,
    must equal the merged model's LLM weights within ``atol``."""
    from safetensors.torch import load_file

    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    scale = config["lora_alpha"] / config["r"]
    lora = load_file(str(adapter / ADAPTER_WEIGHTS))
    chat_config = json.loads((base / "config.json").read_text())

    def applied():
        for name, tensor in iter_safetensors_dir(base):
            module = _PEFT_PREFIX + name.removesuffix(".weight")
            if name.endswith(".weight") and f"{module}.lora_A.weight" in lora:
                a, b = lora[f"{module}.lora_A.weight"].double(), lora[f"{module}.lora_B.weight"].double()
                tensor = (tensor.double() + scale * (b @ a)).to(tensor.dtype)
            yield name, tensor

    want = merged.model.state_dict()
    diff, seen = 0.0, 0
    for name, tensor in iter_chat_to_native(applied(), chat_config):
        if name.startswith(_VLFT_LLM + "model.layers."):
            diff = max(diff, float((tensor.float() - want[name].float()).abs().max()))
            seen += 1
    if not seen or not diff <= atol:
        raise VerifyError(f"{adapter}: base + adapter differs from the merged model's LLM weights by {diff:.2e}")
    return diff


LORA = ExportTarget(name="lora", title="PEFT LoRA adapter",
                    help="the LLM's LoRA as a PEFT adapter for `vllm serve BASE --enable-lora` (needs a checkpoint "
                         "trained with model.connector.train=False and the vision tower frozen)",
                    export=export_lora)
