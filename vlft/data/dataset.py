"""Samples -> model inputs: tokenized once up front (lengths known, bad samples counted), pixels on demand.

Before training only image headers are read (a full decode of a large set would take too long); an image
that then fails to decode while training is skipped and counted (data.on_bad_sample='skip'), or stops the
run naming the sample and the image ('error').
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vlft.data.encode import (IGNORE_INDEX, INTERNVL_IMAGE_TOKENS, LLAVA_IMAGE_TOKENS, EncodedSample, ImageTokens,
                              SampleError, encode_sample)
from vlft.data.problems import MALFORMED, MISSING_IMAGE, TOO_LONG, UNREADABLE_IMAGE
from vlft.data.record import Sample
from vlft.data.templates import ChatTemplate, get_template
from vlft.data.tiling import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ImageError, ImageNotFoundError, \
    TilingSpec, file_error, load_image, num_tiles, shared_tile_budget, tiles_for_image
from vlft.errors import ConfigError, DataError

#: Training-time warnings (an image that fails to decode mid-run), one line each. With no handler set up,
#: logging's last-resort handler prints the bare line to stderr, from DataLoader workers too.
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataPipeline:
    """Everything that turns one Sample into ids, labels and pixels; the same object serves chat and eval."""

    tokenizer: object
    template: ChatTemplate
    tiling: TilingSpec
    image_tokens: ImageTokens
    tokens_per_tile: int
    max_length: int
    system_prompt: str | None = None

    def tile_counts(self, sample: Sample) -> list[int]:
        """Tiles per image from the image headers only (no decoding); several images share the budget."""
        budget = shared_tile_budget(sample.max_tiles or self.tiling.max_tiles, max(1, len(sample.images)))
        return [num_tiles(*_image_size(path, sample), self.tiling, max_tiles=budget) for path in sample.images]

    def encode(self, sample: Sample, tile_counts: list[int] | None = None) -> EncodedSample:
        counts = self.tile_counts(sample) if tile_counts is None else tile_counts
        return encode_sample(sample, self.tokenizer, self.template, image_tokens=self.image_tokens,
                             tokens_per_image=[c * self.tokens_per_tile for c in counts],
                             system_prompt=self.system_prompt)

    def pixels(self, sample: Sample) -> torch.Tensor:
        """[total tiles, 3, S, S] for all images of the sample, in placeholder order."""
        if not sample.images:
            return torch.zeros(0, 3, self.tiling.tile_size, self.tiling.tile_size)
        budget = shared_tile_budget(sample.max_tiles or self.tiling.max_tiles, len(sample.images))
        return torch.cat([tiles_for_image(load_image(path), self.tiling, max_tiles=budget)
                          for path in sample.images])


def pipeline_from_spec(spec, tokenizer, info) -> DataPipeline:
    """Build the pipeline for an ExperimentSpec and the model's VLMInfo (tile size and token counts)."""
    settings = spec.data.tiling
    tile_size = settings.tile_size or info.tile_size
    if tile_size != info.tile_size:
        raise ConfigError(f"data.tiling.tile_size={settings.tile_size} and the vision encoder's input size "
                          f"{info.tile_size} contradict; leave data.tiling.tile_size unset to use the encoder's")
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if info.family == "internvl" else (CLIP_MEAN, CLIP_STD)
    tiling = TilingSpec(mode=settings.mode, tile_size=tile_size, min_tiles=settings.min_tiles,
                        max_tiles=settings.max_tiles, use_thumbnail=settings.use_thumbnail,
                        grid_pinpoints=tuple(tuple(p) for p in settings.grid_pinpoints), mean=mean, std=std)
    try:
        template = get_template(spec.data.template)
    except KeyError as exc:
        raise ConfigError(f"data.template: {exc}") from None
    return DataPipeline(tokenizer=tokenizer, template=template, tiling=tiling,
                        image_tokens=INTERNVL_IMAGE_TOKENS if info.family == "internvl" else LLAVA_IMAGE_TOKENS,
                        tokens_per_tile=info.tokens_per_tile, max_length=spec.data.max_length,
                        system_prompt=spec.data.system_prompt)


@dataclass
class EncodeStats:
    """What reading and encoding the dataset dropped or changed, by kind (`vlft.data.problems`), and the
    images that failed while training; training prints `summary()`, check-data lists each line."""

    kept: int = 0
    dropped: Counter = field(default_factory=Counter)        # kind -> samples left out of training
    problems: list[str] = field(default_factory=list)        # "file:id: what" for each dropped sample
    warned: Counter = field(default_factory=Counter)         # kind -> samples kept with a warning
    warnings: list[str] = field(default_factory=list)
    failed_in_training: dict[int, str] = field(default_factory=dict)  # index -> "file:id: reason" (this process)

    def summary(self, config: str = "CONFIG") -> str:
        """One line: kept, dropped by kind and what to do about it, kept with warnings by kind.

        >>> from collections import Counter
        >>> EncodeStats(kept=9, dropped=Counter({"too long": 2, "missing image": 1})).summary("my.py")
        "9 samples kept; 3 DROPPED (2 too long, 1 missing image): run `vlft check-data my.py` to list them; \
data.on_bad_sample='error' stops instead"
        """
        line = f"{self.kept} samples kept"
        if self.dropped:
            line += (f"; {sum(self.dropped.values())} DROPPED ({_by_kind(self.dropped)}): run `vlft check-data "
                     f"{config}` to list them; data.on_bad_sample='error' stops instead")
        if self.warned:
            line += f"; {sum(self.warned.values())} kept with a warning ({_by_kind(self.warned)})"
        return line

    def training_summary(self) -> str:
        """After training: the samples whose image failed to decode mid-run ("" when none did)."""
        if not self.failed_in_training:
            return ""
        first = next(iter(self.failed_in_training.values()))
        return (f"{len(self.failed_in_training)} sample(s) had an image that failed to decode during training and "
                f"were trained with every label ignored (data.on_bad_sample='skip'); first: {first}")


def _by_kind(counts: Counter) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counts.most_common())


class SupervisedDataset(Dataset):
    """Pre-encoded samples; `__getitem__` only decodes and tiles the images."""

    def __init__(self, samples: list[Sample], pipeline: DataPipeline, *, on_bad_sample: str = "skip"):
        self.pipeline = pipeline
        self.on_bad_sample = on_bad_sample
        self.stats = EncodeStats()
        self.samples: list[Sample] = []
        self.encoded: list[EncodedSample] = []
        self.tiles: list[int] = []
        for sample in samples:
            problem, reason = None, None
            try:
                counts = pipeline.tile_counts(sample)
                encoded = pipeline.encode(sample, counts)
                if len(encoded.input_ids) > pipeline.max_length:
                    reason = TOO_LONG
                    problem = (f"{sample.where}: {len(encoded.input_ids)} tokens > data.max_length="
                               f"{pipeline.max_length} (never cut inside an image; dropped)")
            except SampleError as exc:
                reason, problem = exc.kind, str(exc)
            except ImageError as exc:
                reason = MISSING_IMAGE if isinstance(exc, ImageNotFoundError) else UNREADABLE_IMAGE
                problem = f"{sample.where}: {exc}"
            if problem is not None:
                if on_bad_sample == "error":
                    raise DataError(f"{problem} (data.on_bad_sample='error'; set 'skip' to drop such samples)")
                self.stats.dropped[reason] += 1
                self.stats.problems.append(problem)
                continue
            self.samples.append(sample)
            self.encoded.append(encoded)
            self.tiles.append(sum(counts))
        self.stats.kept = len(self.samples)
        if not self.samples:
            raise DataError(f"no usable samples ({self.stats.summary()}); first problem: "
                            f"{self.stats.problems[0] if self.stats.problems else 'the datasets are empty'}")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> list[int]:
        return [len(e.input_ids) for e in self.encoded]

    @property
    def has_image(self) -> list[bool]:
        return [bool(s.images) for s in self.samples]

    def __getitem__(self, index: int) -> dict:
        encoded = self.encoded[index]
        labels = encoded.labels
        try:
            pixels = self._pixels(index)
        except (ImageError, OSError) as exc:
            sample = self.samples[index]
            if self.on_bad_sample == "error":
                raise DataError(f"{sample.where}: {exc} (while training; data.on_bad_sample='error'; set 'skip' "
                                "to train on without it)") from None
            # Same ids and tile count, so batch plans, packing and exact resume are unchanged; zero tiles
            # and every label ignored, so the sample teaches nothing.
            pixels = torch.zeros(self.tiles[index], 3, self.pipeline.tiling.tile_size, self.pipeline.tiling.tile_size)
            labels = [IGNORE_INDEX] * len(labels)
        return {
            "input_ids": torch.tensor(encoded.input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pixel_values": pixels,
        }

    def _pixels(self, index: int) -> torch.Tensor:
        sample = self.samples[index]
        if index in self.stats.failed_in_training:  # failed before: do not decode (nor warn) again
            raise ImageError(self.stats.failed_in_training[index].removeprefix(f"{sample.where}: "))
        try:
            pixels = self.pipeline.pixels(sample)
            if len(pixels) != self.tiles[index]:  # the file changed since its header was read
                raise ImageError(f"{', '.join(sample.images)}: {len(pixels)} tiles now, {self.tiles[index]} when "
                                 "the data was read (was an image replaced during training?)")
            return pixels
        except (ImageError, OSError) as exc:
            if self.on_bad_sample == "skip":
                line = f"{sample.where}: {exc}"
                self.stats.failed_in_training[index] = line
                log.warning(f"warning: {line}; skipped: trained with every label ignored "
                            "(data.on_bad_sample='skip')")
            raise


def _image_size(path: str, sample: Sample) -> tuple[int, int]:
    from PIL import Image

    try:
        file = open(path, "rb")
    except OSError as exc:
        raise file_error(path, exc) from None
    try:
        with file, Image.open(file) as image:
            return image.size
    except Exception as exc:  # PIL raises several types for a file that is not an image
        raise ImageError(f"cannot read image {path}: {exc}") from None


def build_dataset(spec, tokenizer, info, *, seed: int | None = None) -> SupervisedDataset:
    """Read every dataset of the spec and encode it (what `vlft train` feeds the model)."""
    from vlft.data.formats import DatasetSource, ReadReport, read_all

    sources = [DatasetSource(path=d.path, format=d.format, image_root=d.image_root, repeat=d.repeat,
                             max_tiles=d.max_tiles, name=d.name) for d in spec.data.datasets]
    if not sources:
        raise ConfigError("data.datasets is empty: add at least one dict(path=...)")
    for source in sources:
        if not Path(source.path).exists():
            raise DataError(f"{source.path}: dataset file not found (data.datasets[].path)")
    report = ReadReport()  # collected under 'error' too: the rows kept with a warning are counted either way
    try:
        samples = read_all(sources, seed=spec.schedule.seed if seed is None else seed, report=report)
    except DataError:
        raise
    except ValueError as exc:  # a reader bug must still reach the user as one line naming the data
        raise DataError(f"{', '.join(s.path for s in sources)}: {exc}") from None
    if report.problems and spec.data.on_bad_sample == "error":
        more = f" (and {len(report.problems) - 1} more: vlft check-data lists them)" if len(report.problems) > 1 else ""
        raise DataError(f"{report.problems[0]}{more} (data.on_bad_sample='error'; set 'skip' to drop such samples)")
    dataset = SupervisedDataset(samples, pipeline_from_spec(spec, tokenizer, info),
                                on_bad_sample=spec.data.on_bad_sample)
    if report.problems:  # first, as they were found first (and check-data lists them first)
        dataset.stats.dropped = Counter({MALFORMED: len(report.problems), **dataset.stats.dropped})
        dataset.stats.problems[:0] = report.problems
    kept = {s.where for s in dataset.samples}
    for warning in report.warnings:
        if warning.where in kept:  # a row dropped later is counted as dropped, not twice
            dataset.stats.warned[warning.kind] += 1
            dataset.stats.warnings.append(warning.line)
    return dataset
