"""`--to internvl-chat`: the original ``InternVLChatModel`` layout (trust_remote_code) with the training fields
(template, tiling, pixel shuffle) from the run and the base's remote-code files; verified by reading the weights
back through vlft's converter (no official class is needed)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from vlft.errors import CheckpointError
from vlft.export.hf_files import (INTERNVL_CHAT_TEMPLATE_NAMES, chat_training_fields, export_template,
                                  missing_remote_code_line, write_generation_config, write_model_record,
                                  write_tokenizer)
from vlft.export.merge import MergedModel, StreamedMerge, export_state, model_record
from vlft.export.target_interface import ExportTarget, Written
from vlft.export.verify import check_run_fields, verify_internvl_chat_export
from vlft.export.writers import write_sharded
from vlft.model.internvl_chat import LLM_ARCHS, iter_native_to_chat, native_config_to_chat


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


def verify_internvl_chat(staging: Path, merged: MergedModel, *, dtype):
    fields = chat_training_fields(merged.spec, merged.model.info)
    result = verify_internvl_chat_export(staging, export_state(merged.model), dtype=dtype, training_fields=fields)
    result.config_fields = check_run_fields(staging, merged)
    return result


def check_internvl_chat_source(peek: dict, source: Path) -> None:
    if peek["template"] not in INTERNVL_CHAT_TEMPLATE_NAMES:
        raise CheckpointError(f"--to internvl-chat: the run's template {peek['template']!r} is not one InternVL's "
                              f"remote code knows ({', '.join(INTERNVL_CHAT_TEMPLATE_NAMES)}); use --to hf, whose "
                              "chat template is written in full")


INTERNVL_CHAT = ExportTarget(name="internvl-chat", title="InternVL-chat",
                             help="the original InternVL-chat layout (trust_remote_code)",
                             write=write_internvl_chat, verify=verify_internvl_chat,  # needs no official class
                             check_source=check_internvl_chat_source)
