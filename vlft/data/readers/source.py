"""What a reader is given (a config's dataset entry) and what it reports (bad rows, kept rows that look wrong)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlft.errors import DataError


@dataclass(frozen=True)
class DatasetSource:
    """One entry of a config's ``data.datasets``."""

    path: str                        # .json/.jsonl/.parquet annotations, a save_to_disk folder, or an InternVL meta
    format: str = "auto"             # "auto" or one of vlft.data.readers.sniff.FORMATS
    image_root: str | None = None    # relative image paths resolve here (default: the folder holding `path`)
    repeat: float = 1.0              # <1 keeps a deterministic fraction; >1 repeats the int part and keeps the fraction
    max_tiles: int | None = None     # per-dataset tiling budget (an InternVL meta's max_dynamic_patch wins)
    name: str | None = None          # dataset name for Sample.dataset (default: the file stem; a meta uses its keys)


class DataFormatError(DataError, ValueError):
    """A dataset file or row that cannot be read; the one-line message names the file, sample id and key."""


@dataclass(frozen=True)
class ReadWarning:
    """A row that was read and kept, but looks wrong or was changed (see `normalize_turns`)."""

    kind: str   # one of vlft.data.problems.KEPT_WITH_WARNING
    where: str  # "file:sample-id", as Sample.where
    what: str

    @property
    def line(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class ReadReport:
    """Problems found while reading, collected instead of raised; each bad row is skipped."""

    problems: list[str] = field(default_factory=list)  # one line each: "file:sample-id: what is wrong"
    warnings: list[ReadWarning] = field(default_factory=list)  # rows kept
    #: problem line -> its kind (vlft.data.problems), where the reader names one (the pair readers do).
    kinds: dict[str, str] = field(default_factory=dict)
