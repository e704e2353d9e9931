"""Export: merge LoRA into the base, write official layouts (transformers-native, InternVL-chat, a LoRA adapter),
verify.

    merge_checkpoint(ckpt, out, dtype="bf16")                         vlft's native layout (= transformers "-hf")
    convert_checkpoint(src, out, target="hf"|"internvl-chat"|"lora")  an official format, verified against its class

Floors, each importing only those below it: convert (the `vlft convert` driver) -> targets (the registry) ->
target_hf, target_internvl_chat, target_lora (one module per `--to` value) -> merge, verify, hf_files,
streaming, staging, writers, target_interface (shared helpers; none imports a target or the registry).
"""
from vlft.export.convert import convert_checkpoint
from vlft.export.hf_files import MODEL_RECORD, exported_spec, read_model_record
from vlft.export.merge import MergedModel, load_for_export, merge_checkpoint
from vlft.export.staging import ExportError
from vlft.export.verify import VerifyError, VerifyReport, verify_hf_export
from vlft.export.writers import parse_size, write_sharded

__all__ = [
    "MODEL_RECORD",
    "ExportError",
    "MergedModel",
    "VerifyError",
    "VerifyReport",
    "convert_checkpoint",
    "exported_spec",
    "load_for_export",
    "merge_checkpoint",
    "parse_size",
    "read_model_record",
    "verify_hf_export",
    "write_sharded",
]
