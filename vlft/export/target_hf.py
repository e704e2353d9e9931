"""`--to hf`: transformers-native ``InternVLForConditionalGeneration`` / ``LlavaForConditionalGeneration`` (what
transformers, vLLM and LMDeploy load): vlft's native weights and small files (vlft.export.merge.write_native)
plus the processor files derived from the training tiling; verified against transformers' class."""
from __future__ import annotations

from pathlib import Path

from vlft.errors import CheckpointError, ConfigError
from vlft.export.hf_files import training_tiling, write_processor_files
from vlft.export.merge import MergedModel, StreamedMerge, export_state, release, write_native
from vlft.export.target_interface import ExportTarget, Written
from vlft.export.verify import check_run_fields, check_written_tensors, verify_hf_export
from vlft.export.writers import iter_safetensors_dir


def write_hf(out: Path, merged: MergedModel | StreamedMerge, *, dtype: str, max_shard_size) -> Written:
    report = write_native(out, merged, dtype=dtype, max_shard_size=max_shard_size)
    warnings = write_processor_files(out, merged.info, training_tiling(merged.spec, merged.info))
    return Written(report, warnings)


def verify_hf(staging: Path, merged: MergedModel, *, dtype):
    state = export_state(merged.model)
    tensors = check_written_tensors(iter_safetensors_dir(staging), state, dtype=dtype)
    del state
    fields = check_run_fields(staging, merged)  # needs merged.model, which release() drops
    release(merged)  # the logit check loads one fp32 model at a time from the written files
    result = verify_hf_export(staging)
    result.tensors, result.config_fields = tensors, fields
    return result


def check_hf_source(peek: dict, source: Path) -> None:
    if peek.get("ps_version", "v2") != "v2":
        raise CheckpointError(f"--to hf: the base uses ps_version={peek['ps_version']!r} (InternVL-Chat-V1-5); "
                              "transformers' InternVL implements only the 'v2' pixel shuffle; use --to internvl-chat")


def resolve_verify_hf(family, verify: bool | None) -> bool:
    available = family.official_class_available()
    if verify and not available:
        raise ConfigError(f"--verify: this transformers has no {family.official_class_name}; "
                          "upgrade transformers or pass --no-verify")
    return available if verify is None else bool(verify)


HF = ExportTarget(name="hf", title="transformers-native", help="transformers-native (transformers, vLLM, LMDeploy)",
                  write=write_hf, verify=verify_hf, resolve_verify=resolve_verify_hf, check_source=check_hf_source)
