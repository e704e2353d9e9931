"""Write a training checkpoint (merged on the way, see vlft.export.merge) or a merged directory in an official
format.

- ``hf``: transformers-native ``InternVLForConditionalGeneration`` / ``LlavaForConditionalGeneration``
  (what transformers, vLLM and LMDeploy load): vlft's native weights, config, generation config,
  tokenizer with the image tokens named and the training chat template, and the processor files
  derived from the training tiling.
- ``internvl-chat``: the original ``InternVLChatModel`` layout (trust_remote_code) with the training
  fields (template, tiling, pixel shuffle) from the run and the base's remote-code files.
- ``lora``: the LLM's LoRA as a PEFT adapter for the unchanged base (vlft.export.lora writes OUT itself).

The targets are the entries of vlft.export.targets.TARGETS.

Both stream the weights into shards and write atomically (see vlft.export.staging). Verification runs
on the staged directory before it is renamed into place, so a failed check leaves no OUT behind.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from vlft.errors import CheckpointError
from vlft.export.hf_files import (INTERNVL_CHAT_TEMPLATE_NAMES, MODEL_RECORD, export_template,
                                  missing_remote_code_line, read_model_record, training_tiling,
                                  write_generation_config, write_model_record, write_processor_files, write_tokenizer)
from vlft.export.merge import (MergedModel, StreamedMerge, load_for_export, model_record, prepare_merge,
                               write_native)
from vlft.export.staging import check_output, staged_output
from vlft.export.targets import TARGETS, ExportTarget, Written, target_named
from vlft.export.writers import human_size, parse_size, torch_dtype, write_sharded
from vlft.families import FAMILIES, family_named
from vlft.model.internvl_chat import LLM_ARCHS, iter_native_to_chat, native_config_to_chat
from vlft.model.layouts import CHECKPOINT_MARKER, detect_layout


def convert_checkpoint(checkpoint: str | Path, out: str | Path, *, target: str = "hf", verify: bool | None = None,
                       dtype: str = "bf16", max_shard_size: str | int = "2GB", overwrite: bool = False,
                       log=print) -> Path:
    """Write CHECKPOINT (training checkpoint or `vlft merge` output) to OUT in the ``target`` format.

    Args:
        target: a `vlft.export.targets` name: "hf" (transformers-native), "internvl-chat" (original InternVL
            layout) or "lora" (the LLM's LoRA as a PEFT adapter for the base, from a training checkpoint).
        verify: None = on when it can run (hf: transformers has the class; internvl-chat: always).
            hf: logits within 1e-4 and 16 greedy tokens equal between transformers' class and vlft's
            model (fp32, eager), written tensors bit-equal to the merged model, and the exported chat
            template + processor files rebuild the training prompt. internvl-chat: the weights read
            back through vlft's converter equal the merged model; the config's training fields are the run's.
        dtype: "bf16" | "fp16" | "fp32" for the written weights.
        max_shard_size: largest safetensors shard ("2GB", "500MB").
        overwrite: replace a non-empty OUT (only once the new one is complete).

    Returns OUT. Raises a VlftError subclass with one line on bad input, a failed write or a failed check.
    """
    source, out = Path(checkpoint), Path(out)
    peek = peek_source(source)
    chosen = check_target(target, peek, source)
    if chosen.export is not None:  # a target that writes OUT whole from the source (no merged model)
        chosen.export(source, out, verify=verify, overwrite=overwrite, log=log)
        return out
    weights_dtype = torch_dtype(dtype)
    parse_size(max_shard_size)
    check_output(out, overwrite=overwrite, sources=[source])
    run_verify = chosen.resolve_verify(family_named(peek["family"]), verify)

    if not run_verify and (source / CHECKPOINT_MARKER).is_file():
        merged = prepare_merge(source)  # streamed where it can be: nothing needs the model in memory
    else:
        merged = load_for_export(source)
    with staged_output(out, overwrite=overwrite, sources=[source], log=log) as staging:
        written = chosen.write(staging, merged, dtype=dtype, max_shard_size=max_shard_size)
        report = written.report
        for warning in written.warnings:
            log(f"warning: {warning}")
        log(f"{target}: {len(report.weight_map)} tensors, {human_size(report.total_bytes)} {dtype} in "
            f"{len(report.shard_bytes)} shard(s), the largest {human_size(report.largest_shard_bytes)}")
        if run_verify:
            result = chosen.verify(staging, merged, dtype=weights_dtype)
            log(result.summary())
    log(f"wrote {out}" if written.incomplete is None else f"wrote {out}, which is not complete: {written.incomplete}")
    return out


# ------------------------------------------------------------------------------------------------
# Checks before anything heavy runs


def peek_source(source: Path) -> dict:
    """Family, template and system prompt from the source's JSON alone (no model is loaded)."""
    from vlft.model.trained_state import read_checkpoint_meta

    if not source.is_dir():
        raise CheckpointError(f"{source}: no such directory")
    if (source / CHECKPOINT_MARKER).is_file():
        meta = read_checkpoint_meta(source)
        data = meta.get("config", {}).get("data", {})
        return {"family": meta["info"]["family"], "template": data.get("template"),
                "system_prompt": data.get("system_prompt"), "ps_version": meta["info"].get("ps_version", "v2")}
    if (source / MODEL_RECORD).is_file():
        record = read_model_record(source)
        return {"family": record["family"], "template": record["template"], "system_prompt": record["system_prompt"],
                "ps_version": record["info"].get("ps_version", "v2")}
    layout = detect_layout(source)  # one line for a directory that is no model at all
    raise CheckpointError(f"{source}: a {layout.value} directory that vlft did not write (no {CHECKPOINT_MARKER} or "
                          f"{MODEL_RECORD}); give a training checkpoint or the output of `vlft merge`")


def check_target(target: str, peek: dict, source: Path) -> ExportTarget:
    """The target, once the source's family supports it and the target accepts the source."""
    chosen = target_named(target)
    family = family_named(peek["family"])
    if chosen.name not in family.export_targets:
        able = [f.display_name for f in FAMILIES.values() if chosen.name in f.export_targets]
        raise CheckpointError(f"--to {chosen.name}: {source} holds a {family.display_name} model, and the "
                              f"{chosen.title} layout is for {' and '.join(able)} models only; use --to "
                              f"{' or --to '.join(t for t in family.export_targets if t in TARGETS)}")
    chosen.check_source(peek, source)
    return chosen


# ------------------------------------------------------------------------------------------------
# Writers


def write_hf(out: Path, merged: MergedModel | StreamedMerge, *, dtype: str, max_shard_size) -> Written:
    report = write_native(out, merged, dtype=dtype, max_shard_size=max_shard_size)
    warnings = write_processor_files(out, merged.info, training_tiling(merged.spec, merged.info))
    return Written(report, warnings)


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


def write_internvl_chat(out: Path, merged: MergedModel | StreamedMerge, *, dtype: str, max_shard_size) -> Written:
    """The original InternVL layout; the weights go through iter_native_to_chat one layer at a time, so a
    StreamedMerge never has the model in memory (InternVL's native names are its export names)."""
    spec = merged.spec
    native = merged.config(dtype=dtype).to_dict()
    llm_arch = merged.provenance.get("llm_arch")
    if llm_arch is None:
        raise CheckpointError(f"--to internvl-chat: the LLM ({native['text_config']['model_type']}) has no "
                              f"InternVL-chat layout here (it knows {', '.join(LLM_ARCHS)}); use --to hf")
    fields = chat_training_fields(spec, merged.info)
    chat_config = native_config_to_chat(native, llm_arch=llm_arch, training_fields=fields,
                                        base_config=merged.base_chat_config)
    report = write_sharded(iter_native_to_chat(merged.items(), native, llm_arch=llm_arch), out, dtype=dtype,
                           max_shard_size=max_shard_size)
    (out / "config.json").write_text(json.dumps(chat_config, indent=2) + "\n")
    # Its servers (vLLM's, LMDeploy's InternVL processors, InternVL's own `chat`) expand "<image>" themselves.
    template = export_template(spec, merged.family, layout="internvl-chat")
    write_generation_config(out, merged.tokenizer, template)
    write_tokenizer(out, merged.tokenizer, family=merged.family, template=template)
    write_model_record(out, model_record(merged, dtype=dtype, layout="internvl-chat"))
    warnings, incomplete = [], None
    for file in merged.remote_code:
        shutil.copy2(file, out / file.name)
    if not merged.remote_code:
        warnings.append(missing_remote_code_line(llm_arch, merged.provenance.get("base_model")))
        incomplete = "add the InternVL remote code named in the warning above"
    if spec.data.system_prompt is not None:
        warnings.append("data.system_prompt is set, but InternVL's remote code takes the template's own system "
                        "message; pass yours with model.system_message at inference")
    return Written(report, warnings, incomplete)
