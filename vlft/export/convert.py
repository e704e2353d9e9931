"""`vlft convert`: write a training checkpoint (merged on the way, see vlft.export.merge) or a merged directory
with one of the export targets (vlft.export.targets: ``hf``, ``internvl-chat``, ``lora``, ``gguf``).

A target with a writer gets the merged model and a staging directory (vlft.export.staging); verification runs
on the staged directory before it is renamed into place, so a failed check leaves no OUT behind. A target
that writes OUT whole (``lora``) is handed the source.
"""
from __future__ import annotations

from pathlib import Path

from vlft.errors import CheckpointError
from vlft.export.hf_files import MODEL_RECORD, read_model_record
from vlft.export.merge import load_for_export, prepare_merge
from vlft.export.staging import check_output, staged_output
from vlft.export.target_interface import ExportTarget
from vlft.export.targets import TARGETS, target_named
from vlft.export.writers import human_size, parse_size, torch_dtype
from vlft.families import FAMILIES, family_named
from vlft.model.layouts import CHECKPOINT_MARKER, detect_layout
from vlft.model.trained_state import read_checkpoint_meta


def convert_checkpoint(checkpoint: str | Path, out: str | Path, *, target: str = "hf", verify: bool | None = None,
                       dtype: str = "bf16", max_shard_size: str | int = "2GB", overwrite: bool = False,
                       log=print, options: dict | None = None) -> Path:
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
        options: the target's own keyword arguments to its writer (gguf: outtype, quantize, llama_cpp).

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
        written = chosen.write(staging, merged, dtype=dtype, max_shard_size=max_shard_size, **(options or {}))
        report = written.report
        for warning in written.warnings:
            log(f"warning: {warning}")
        if report.weight_map:
            log(f"{target}: {len(report.weight_map)} tensors, {human_size(report.total_bytes)} {dtype} in "
                f"{len(report.shard_bytes)} shard(s), the largest {human_size(report.largest_shard_bytes)}")
        else:  # a target whose files another tool wrote (gguf): the files, not tensors
            log(f"{target}: " + ", ".join(f"{name} {human_size(size)}" for name, size in report.shard_bytes.items()))
        if run_verify:
            result = chosen.verify(staging, merged, dtype=weights_dtype)
            log(result.summary())
    log(f"wrote {out}" if written.incomplete is None else f"wrote {out}, which is not complete: {written.incomplete}")
    return out


# ------------------------------------------------------------------------------------------------
# Checks before anything heavy runs


def peek_source(source: Path) -> dict:
    """Family, template and system prompt from the source's JSON alone (no model is loaded)."""
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
    refusal = family.export_refusal(chosen.name)
    if refusal:
        raise CheckpointError(f"--to {chosen.name}: {source} holds a {family.display_name} model: {refusal}")
    if chosen.name not in family.export_targets:
        able = [f.display_name for f in FAMILIES.values() if chosen.name in f.export_targets]
        raise CheckpointError(f"--to {chosen.name}: {source} holds a {family.display_name} model, and the "
                              f"{chosen.title} layout is for {' and '.join(able)} models only; use --to "
                              f"{' or --to '.join(t for t in family.export_targets if t in TARGETS)}")
    chosen.check_source(peek, source)
    return chosen
