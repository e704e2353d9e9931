"""The export targets: one `ExportTarget` per `vlft convert --to` value, each in its own module
(vlft.export.target_*), listed here. The CLI's `--to` choices and `convert_checkpoint`'s dispatch both read
this registry; a new target is one module and one entry below, and no target imports this module."""
from __future__ import annotations

from vlft.errors import ConfigError
from vlft.export.target_gguf import GGUF
from vlft.export.target_hf import HF
from vlft.export.target_interface import ExportTarget
from vlft.export.target_internvl_chat import INTERNVL_CHAT
from vlft.export.target_lora import LORA

TARGETS: dict[str, ExportTarget] = {target.name: target for target in (HF, INTERNVL_CHAT, LORA, GGUF)}


def target_named(name: str) -> ExportTarget:
    """The target `--to name` selects; ConfigError naming the known ones."""
    if name not in TARGETS:
        raise ConfigError(f"--to {name!r} is not one of {', '.join(TARGETS)}")
    return TARGETS[name]


def targets_help() -> str:
    """The `--to` help line: each target with what it is for."""
    return "; ".join(f"{target.name}: {target.help}" for target in TARGETS.values()) + "."
