"""Fold a training checkpoint's LoRA (and trained connector) into the full-precision base; write vlft's
native layout, which is the transformers "-hf" layout plus ``vlft_model.json``.

A QLoRA run's base is reloaded unquantized (merging into 4-bit weights would round the update away) and
the same adapter is merged into it. For a whole base (transformers-native or InternVL-chat) the merge is
streamed (vlft.export.streaming): the base is read tensor by tensor, each LoRA layer merged by peft on its
own, and the shard writer keeps no tensor once it is on disk. A base composed from parts, and
`convert --verify`, which needs the model anyway, merge in memory (merge_training_checkpoint), whose
output the streamed one equals tensor for tensor.

    out/
      config.json                 InternVLConfig / LlavaConfig (tie_word_embeddings=false)
      generation_config.json      eos = the template's stop words
      model*.safetensors + model.safetensors.index.json
      tokenizer files + chat_template.jinja (the training template)
      vlft_model.json             template, system prompt, tiling, VLM info, provenance, resolved config
      remote_code/                the base's InternVL-chat *.py + config.json (only for such a base)
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlft.config import spec_from_dict, spec_to_dict
from vlft.errors import CheckpointError
from vlft.export.hf_files import (MODEL_RECORD, export_template, exported_spec, official_config, official_config_of,
                                  read_model_record, training_tiling, write_generation_config, write_model_record,
                                  write_tokenizer)
from vlft.export.staging import check_output, staged_output
from vlft.export.streaming import (NESTED_VISION_TYPES, NotStreamable, base_configs, check_streamable, export_name,
                                   merged_items, streamable_base)
from vlft.export.writers import ShardReport, human_size, parse_size, torch_dtype, write_sharded
from vlft.model.base_fingerprint import check_checkpoint_base
from vlft.model.internvl_chat import llm_arch_of_chat_config, llm_arch_of_text_type
from vlft.model.adapters import apply_training_policy
from vlft.model.layouts import CHECKPOINT_MARKER, Layout, detect_layout
from vlft.model.load import build_vlm, load_tokenizer
from vlft.model.load import torch_dtype as model_dtype
from vlft.model.trained_state import ADAPTERS, info_from_meta, is_peft, load_trained_state, read_checkpoint_meta
from vlft.model.vlm import VisionLanguageModel

#: Where a merged directory keeps the base's InternVL-chat remote code, for a later `convert --to internvl-chat`.
REMOTE_CODE_DIR = "remote_code"
DEFAULT_MERGE_SHARD = "2GB"


@dataclass
class MergedModel:
    """A model ready to export: LoRA merged away, with the run's config and where its base came from."""

    model: VisionLanguageModel
    tokenizer: object
    spec: object                     # the run's resolved ExperimentSpec
    provenance: dict                 # base_model, base_layout, llm_arch, source, step
    base_chat_config: dict | None = None         # the base's InternVL-chat config.json, when it had one
    remote_code: list[Path] = field(default_factory=list)  # the base's *.py (InternVL-chat bases)

    @property
    def info(self):
        return self.model.info

    @property
    def family(self) -> str:
        return self.model.info.family

    def items(self):
        return export_items(self.model)

    def config(self, *, dtype: str):
        return official_config(self.model, dtype=dtype)


@dataclass
class StreamedMerge:
    """A training checkpoint to be merged on its way to disk: all but the weights, which `items` streams."""

    checkpoint: Path
    base: Path
    tokenizer: object
    spec: object                     # the run's resolved ExperimentSpec
    info: object                     # VLMInfo, from the checkpoint
    provenance: dict
    text_config: object              # the configs the in-memory merge's model would carry
    vision_config: object
    base_chat_config: dict | None = None
    remote_code: list[Path] = field(default_factory=list)

    @property
    def family(self) -> str:
        return self.info.family

    def items(self):
        """See merged_items."""
        return merged_items(self.checkpoint, self.base, model_dtype=model_dtype(self.spec.model.dtype),
                            vision_type=self.vision_config.model_type, family=self.info.family)

    def config(self, *, dtype: str):
        return official_config_of(self.text_config, self.vision_config, self.info,
                                  vocab_size=self.text_config.vocab_size, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# Building the merged model


def merge_adapters(model: VisionLanguageModel) -> VisionLanguageModel:
    """Replace every peft-wrapped part by its merged base module (in place); returns the model."""
    for part in ADAPTERS:
        module = getattr(model, part)
        if is_peft(module):
            setattr(model, part, module.merge_and_unload())
    left = [name for name, _ in model.named_parameters() if "lora_" in name]
    if left:
        raise RuntimeError(f"LoRA weights left after merging: {left[:3]}")
    model.requires_grad_(False)
    return model.eval()


def merge_training_checkpoint(checkpoint: str | Path) -> MergedModel:
    """Rebuild a checkpoint's model on its full-precision base and merge its adapters (in memory)."""
    checkpoint = Path(checkpoint)
    meta = read_checkpoint_meta(checkpoint)
    check_checkpoint_base(meta, checkpoint)
    spec = spec_from_dict(meta["config"])
    # Eager attention and no checkpointing: merging runs no forward, and needs no flash-attn on this machine.
    build = dataclasses.replace(spec.model, attn_implementation="eager", gradient_checkpointing=False)
    with warnings.catch_warnings():  # deprecation notes from the libraries say nothing to a user merging
        warnings.simplefilter("ignore", FutureWarning)
        model, _ = build_vlm(build, quantize=False, tokenizer_dir=checkpoint)
        apply_training_policy(model, build)
        load_trained_state(model, checkpoint)
        merge_adapters(model)
    provenance = {"source": str(checkpoint.resolve()), "step": meta.get("step"),
                  "base_model": meta.get("base_model") or spec.model.path}
    merged = MergedModel(model=model, tokenizer=load_tokenizer(checkpoint), spec=spec, provenance=provenance)
    _describe_base(merged, spec.model, model.language_model.config.model_type)
    return merged


def streamed_merge(checkpoint: str | Path) -> StreamedMerge:
    """What the streamed merge needs (configs, tokenizer, provenance); NotStreamable for a parts base or an
    adapter using peft features the one-layer merge does not cover."""
    checkpoint = Path(checkpoint)
    meta = read_checkpoint_meta(checkpoint)
    check_checkpoint_base(meta, checkpoint)
    spec = spec_from_dict(meta["config"])
    base = streamable_base(meta)
    check_streamable(checkpoint)
    info = info_from_meta(meta)
    text_config, vision_config = base_configs(base, info)
    provenance = {"source": str(checkpoint.resolve()), "step": meta.get("step"),
                  "base_model": meta.get("base_model") or spec.model.path}
    merged = StreamedMerge(checkpoint=checkpoint, base=base, tokenizer=load_tokenizer(checkpoint), spec=spec,
                           info=info, provenance=provenance, text_config=text_config, vision_config=vision_config)
    _describe_base(merged, spec.model, text_config.model_type)
    return merged


def _describe_base(merged, model_spec, text_type: str) -> None:
    """Record the base's layout and LLM architecture; keep an InternVL-chat base's config and remote code."""
    llm_arch = llm_arch_of_text_type(text_type)  # the InternVL-chat LLM entry an -hf base can be written as
    if model_spec.path is None:
        layout = "parts"
    else:
        base = Path(model_spec.path)
        layout_enum = detect_layout(base)
        layout = layout_enum.name.lower()
        if layout_enum is Layout.INTERNVL_CHAT:
            merged.base_chat_config = json.loads((base / "config.json").read_text())
            llm_arch = llm_arch_of_chat_config(merged.base_chat_config)
            merged.remote_code = sorted(base.glob("*.py"))
    merged.provenance.update(base_layout=layout, llm_arch=llm_arch)


def load_merged_dir(path: str | Path) -> MergedModel:
    """A directory `vlft merge` (or `vlft convert`) wrote, loaded back as a MergedModel."""
    path = Path(path)
    record = read_model_record(path)
    spec = exported_spec(path, record, attn_implementation="eager")
    model, tokenizer = build_vlm(spec.model, quantize=False)
    model.requires_grad_(False)
    merged = MergedModel(model=model.eval(), tokenizer=tokenizer, spec=spec_from_dict(record["config"]),
                         provenance={k: record.get(k) for k in ("source", "step", "base_model", "base_layout",
                                                                "llm_arch")})
    code = path / REMOTE_CODE_DIR
    if (code / "config.json").is_file():
        merged.base_chat_config = json.loads((code / "config.json").read_text())
        merged.remote_code = sorted(code.glob("*.py"))
    elif detect_layout(path) is Layout.INTERNVL_CHAT:  # a `convert --to internvl-chat` output
        merged.base_chat_config = json.loads((path / "config.json").read_text())
        merged.remote_code = sorted(path.glob("*.py"))
    return merged


def load_for_export(source: str | Path) -> MergedModel:
    """A training checkpoint (merged in memory) or a directory vlft exported."""
    source = Path(source)
    if not source.is_dir():
        raise CheckpointError(f"{source}: no such directory")
    if (source / CHECKPOINT_MARKER).is_file():
        return merge_training_checkpoint(source)
    if (source / MODEL_RECORD).is_file():
        return load_merged_dir(source)
    layout = detect_layout(source)  # raises for a directory that is no model at all
    raise CheckpointError(f"{source}: a {layout.value} directory that vlft did not write (no {CHECKPOINT_MARKER} or "
                          f"{MODEL_RECORD}); give a training checkpoint or the output of `vlft merge`")


# ------------------------------------------------------------------------------------------------
# Writing the native layout


def model_record(merged: MergedModel | StreamedMerge, *, dtype: str, layout: str) -> dict:
    spec, info = merged.spec, merged.info
    tiling = training_tiling(spec, info)
    return {
        "layout": layout,
        "family": info.family,
        "info": dataclasses.asdict(info),
        "template": spec.data.template,
        "system_prompt": spec.data.system_prompt,
        "tiling": dataclasses.asdict(tiling),
        "dtype": dtype,
        **merged.provenance,
        "config": spec_to_dict(spec),
    }


def write_native(out: Path, merged: MergedModel | StreamedMerge, *, dtype: str,
                 max_shard_size: str | int) -> ShardReport:
    """Weights, config.json, generation_config.json, tokenizer + chat template, vlft_model.json."""
    report = write_sharded(merged.items(), out, dtype=dtype, max_shard_size=max_shard_size)
    merged.config(dtype=dtype).save_pretrained(str(out))
    template = export_template(merged.spec, merged.family)
    write_generation_config(out, merged.tokenizer, template)
    write_tokenizer(out, merged.tokenizer, family=merged.family, template=template)
    write_model_record(out, model_record(merged, dtype=dtype, layout="hf"))
    return report


def copy_remote_code(merged: MergedModel | StreamedMerge, out: Path) -> list[str]:
    """The base's InternVL-chat remote-code files (and its config, for fields vlft does not derive)."""
    out.mkdir(exist_ok=True)
    for file in merged.remote_code:
        shutil.copy2(file, out / file.name)
    if merged.base_chat_config is not None:
        (out / "config.json").write_text(json.dumps(merged.base_chat_config, indent=2) + "\n")
    return [file.name for file in merged.remote_code]


def export_items(model: VisionLanguageModel):
    """(name, tensor) of the merged model as written, by reference (casting happens in the shard writer).

    Names are the model's state-dict names as the -hf layout stores them (`streaming.export_name`).
    """
    nest = (model.vision_tower.config.model_type in NESTED_VISION_TYPES
            and not hasattr(model.vision_tower, "vision_model"))
    for name, tensor in model.state_dict().items():
        yield export_name(name, nest, model.info.family), tensor


def export_state(model: VisionLanguageModel) -> dict:
    return dict(export_items(model))


def merge_checkpoint(checkpoint: str | Path, out: str | Path, *, dtype: str = "bf16", overwrite: bool = False,
                     max_shard_size: str | int = DEFAULT_MERGE_SHARD, log=print) -> Path:
    """Merge a training CHECKPOINT's adapters into its full-precision base and write OUT (native layout).

    Args:
        checkpoint: a directory `vlft train` wrote (``vlft_checkpoint.json``, adapters, trained tensors).
        out: created atomically; an existing non-empty OUT is refused unless ``overwrite``.
        dtype: "bf16", "fp16" or "fp32" for the written weights.
        max_shard_size: largest safetensors shard, e.g. "2GB".

    Returns the path written. Raises CheckpointError / ExportError with one line on bad input or failure.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_dir():
        raise CheckpointError(f"{checkpoint}: no such directory")
    read_checkpoint_meta(checkpoint)  # one line if this is not a training checkpoint
    torch_dtype(dtype)
    parse_size(max_shard_size)
    check_output(out, overwrite=overwrite, sources=[checkpoint])
    merged = prepare_merge(checkpoint)
    with staged_output(out, overwrite=overwrite, sources=[checkpoint], log=log) as staging:
        report = write_native(staging, merged, dtype=dtype, max_shard_size=max_shard_size)
        if merged.remote_code or merged.base_chat_config is not None:
            copy_remote_code(merged, staging / REMOTE_CODE_DIR)
    log(f"merged {checkpoint} -> {out}: {len(report.weight_map)} tensors, {report.total_parameters / 1e6:.1f}M "
        f"parameters, {human_size(report.total_bytes)} {dtype} in {len(report.shard_bytes)} shard(s)")
    return out


def prepare_merge(checkpoint: str | Path) -> MergedModel | StreamedMerge:
    """The streamed merge where it applies, else the model merged in memory."""

    try:
        return streamed_merge(checkpoint)
    except NotStreamable:
        return merge_training_checkpoint(checkpoint)


def release(merged: MergedModel) -> None:
    """Drop the model's tensors now (the caller may still hold the MergedModel)."""
    import gc

    merged.model = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
