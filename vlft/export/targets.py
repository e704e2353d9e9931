"""Export targets: one `ExportTarget` per `vlft convert --to` value, each a writer and a verifier.

A new target (the `lora` adapters, later `gguf`) is one entry in TARGETS; the CLI's `--to` choices and
`convert_checkpoint`'s dispatch both read this registry. The CLI reads it at start-up, so this module
imports nothing heavy at its top: each target's functions import their layer when they run.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vlft.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class Written:
    """What a target's `write` put into the staging directory."""

    report: object                    # vlft.export.writers.ShardReport of the weights
    warnings: list[str] = field(default_factory=list)
    #: Why OUT cannot be used as written (files the user still has to add), or None for a complete folder.
    incomplete: str | None = None


@dataclass(frozen=True)
class ExportTarget:
    """One output format of `vlft convert`: a merged model written (``write``) and checked (``verify``) in a
    staging directory, or, for a target that needs no merged model, ``export``, which writes OUT whole."""

    name: str                         # the --to value
    title: str                        # the layout's name in messages ("InternVL-chat")
    help: str                         # one line for `vlft convert --help`
    #: (staging dir, MergedModel | StreamedMerge, dtype, max_shard_size) -> Written
    write: Callable[..., Written] | None = None
    #: (staging dir, MergedModel, torch dtype of the written weights) -> VerifyReport; raises VerifyError
    verify: Callable[..., object] | None = None
    #: (family, --verify flag: True/False/None) -> whether verification runs; ConfigError when asked for
    #: and impossible.
    resolve_verify: Callable[[object, bool | None], bool] = lambda family, verify: verify is not False
    #: (peek of the source: family/template/system_prompt/ps_version, source dir) -> None; CheckpointError
    #: when this source cannot be written in this layout (checked before anything heavy is loaded).
    check_source: Callable[[dict, Path], None] = lambda peek, source: None
    #: (source, out, verify=, overwrite=, log=) -> None: writes, verifies and stages OUT itself.
    export: Callable[..., None] | None = None

    def __post_init__(self):
        if (self.export is None) == (self.write is None or self.verify is None):
            raise ValueError(f"export target {self.name!r}: give write and verify, or export")


# ------------------------------------------------------------------------------------------------
# hf: transformers-native


def _write_hf(out: Path, merged, *, dtype: str, max_shard_size):
    from vlft.export.convert import write_hf

    return write_hf(out, merged, dtype=dtype, max_shard_size=max_shard_size)


def _verify_hf(staging: Path, merged, *, dtype):
    from vlft.export.merge import export_state, release
    from vlft.export.verify import check_written_tensors, verify_hf_export
    from vlft.export.writers import iter_safetensors_dir

    state = export_state(merged.model)
    tensors = check_written_tensors(iter_safetensors_dir(staging), state, dtype=dtype)
    del state
    fields = _check_fields(staging, merged)  # needs merged.model, which release() drops
    release(merged)  # the logit check loads one fp32 model at a time from the written files
    result = verify_hf_export(staging)
    result.tensors, result.config_fields = tensors, fields
    return result


def _check_fields(staging: Path, merged) -> list[str]:
    from vlft.export.verify import check_computation_fields, run_overrides

    return check_computation_fields(staging, merged.provenance.get("base_model"), merged.family,
                                    overrides=run_overrides(merged.spec))


def _check_hf_source(peek: dict, source: Path) -> None:
    if peek.get("ps_version", "v2") != "v2":
        raise CheckpointError(f"--to hf: the base uses ps_version={peek['ps_version']!r} (InternVL-Chat-V1-5); "
                              "transformers' InternVL implements only the 'v2' pixel shuffle; use --to internvl-chat")


def _resolve_verify_hf(family, verify: bool | None) -> bool:
    available = family.official_class_available()
    if verify and not available:
        raise ConfigError(f"--verify: this transformers has no {family.official_class_name}; "
                          "upgrade transformers or pass --no-verify")
    return available if verify is None else bool(verify)


# ------------------------------------------------------------------------------------------------
# internvl-chat: the original InternVLChatModel layout


def _write_internvl_chat(out: Path, merged, *, dtype: str, max_shard_size):
    from vlft.export.convert import write_internvl_chat

    return write_internvl_chat(out, merged, dtype=dtype, max_shard_size=max_shard_size)


def _verify_internvl_chat(staging: Path, merged, *, dtype):
    from vlft.export.convert import chat_training_fields
    from vlft.export.merge import export_state
    from vlft.export.verify import verify_internvl_chat_export

    fields = chat_training_fields(merged.spec, merged.model.info)
    result = verify_internvl_chat_export(staging, export_state(merged.model), dtype=dtype, training_fields=fields)
    result.config_fields = _check_fields(staging, merged)
    return result


def _check_internvl_chat_source(peek: dict, source: Path) -> None:
    from vlft.export.hf_files import INTERNVL_CHAT_TEMPLATE_NAMES

    if peek["template"] not in INTERNVL_CHAT_TEMPLATE_NAMES:
        raise CheckpointError(f"--to internvl-chat: the run's template {peek['template']!r} is not one InternVL's "
                              f"remote code knows ({', '.join(INTERNVL_CHAT_TEMPLATE_NAMES)}); use --to hf, whose "
                              "chat template is written in full")


# ------------------------------------------------------------------------------------------------
# lora: the LLM's LoRA as a PEFT adapter a server applies to the unchanged base


def _export_lora(source: Path, out: Path, *, verify: bool | None, overwrite: bool, log) -> None:
    from vlft.export.lora import export_lora

    export_lora(source, out, verify=verify, overwrite=overwrite, log=log)


TARGETS: dict[str, ExportTarget] = {target.name: target for target in (
    ExportTarget(name="hf", title="transformers-native",
                 help="transformers-native (transformers, vLLM, LMDeploy)",
                 write=_write_hf, verify=_verify_hf, resolve_verify=_resolve_verify_hf,
                 check_source=_check_hf_source),
    ExportTarget(name="internvl-chat", title="InternVL-chat",
                 help="the original InternVL-chat layout (trust_remote_code)",
                 write=_write_internvl_chat, verify=_verify_internvl_chat,  # needs no official class
                 check_source=_check_internvl_chat_source),
    ExportTarget(name="lora", title="PEFT LoRA adapter",
                 help="the LLM's LoRA as a PEFT adapter for `vllm serve BASE --enable-lora` (needs a checkpoint "
                      "trained with model.connector.train=False and the vision tower frozen)",
                 export=_export_lora),
)}


def target_named(name: str) -> ExportTarget:
    """The target `--to name` selects; ConfigError naming the known ones."""
    if name not in TARGETS:
        raise ConfigError(f"--to {name!r} is not one of {', '.join(TARGETS)}")
    return TARGETS[name]


def targets_help() -> str:
    """The `--to` help line: each target with what it is for."""
    return "; ".join(f"{target.name}: {target.help}" for target in TARGETS.values()) + "."
