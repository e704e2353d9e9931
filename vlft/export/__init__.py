"""Export: merge LoRA into the base, write official layouts (transformers-native, InternVL-chat), verify.

    merge_checkpoint(ckpt, out, dtype="bf16")                  vlft's native layout (= transformers "-hf")
    convert_checkpoint(src, out, target="hf"|"internvl-chat")  an official format, verified against its class
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
