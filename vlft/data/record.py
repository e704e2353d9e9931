"""The one internal shape every dataset format is read into: a conversation with its images."""
from __future__ import annotations

from dataclasses import dataclass, field

IMAGE_PLACEHOLDER = "<image>"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Turn:
    role: str  # "system" | "user" | "assistant"
    text: str  # user turns carry one IMAGE_PLACEHOLDER per image, in order


@dataclass(frozen=True)
class Sample:
    id: str                       # the sample's id in its source file (or its row index)
    source: str                   # the annotation file it came from (for error messages)
    dataset: str                  # the dataset's name (meta key or file stem)
    turns: tuple[Turn, ...]
    images: tuple[str, ...] = ()  # absolute image paths, in placeholder order
    max_tiles: int | None = None  # per-dataset override of the tiling budget
    extra: dict = field(default_factory=dict, compare=False)  # e.g. choices / category for eval

    @property
    def where(self) -> str:
        """`file:sample-id` for one-line error messages."""
        return f"{self.source}:{self.id}"
