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


@dataclass(frozen=True)
class PreferencePair:
    """One preference sample: a prompt (turns up to and including the last user turn) and two answers to it.

    Both answers share the prompt's images; the preference readers (LLaMA-Factory's, InternVL MPO's JSONL,
    `messages` + `chosen`/`rejected`) all read into this shape.
    """
    id: str
    source: str
    dataset: str
    prompt: tuple[Turn, ...]      # ends with a user turn; earlier assistant turns are context, not trained
    chosen: str                   # the preferred assistant answer to the last user turn
    rejected: str                 # the dispreferred one
    images: tuple[str, ...] = ()  # absolute image paths, in placeholder order
    max_tiles: int | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.id}"

    def as_sample(self, answer: str) -> Sample:
        """The SFT-shaped conversation of the prompt followed by `answer` (chosen or rejected)."""
        return Sample(id=self.id, source=self.source, dataset=self.dataset,
                      turns=self.prompt + (Turn("assistant", answer),), images=self.images,
                      max_tiles=self.max_tiles, extra=self.extra)
