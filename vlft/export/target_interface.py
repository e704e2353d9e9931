"""What every `vlft convert --to` target is: an `ExportTarget` (write + verify, or one export that writes OUT
whole) and the `Written` its writer returns. Targets import this; the registry (vlft.export.targets) lists them."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


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
