"""Samples -> model inputs: tokenized once up front (lengths known, bad samples counted), pixels on demand."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vlft.data.encode import (INTERNVL_IMAGE_TOKENS, LLAVA_IMAGE_TOKENS, EncodedSample, ImageTokens,
                              SampleError, encode_sample)
from vlft.data.record import Sample
from vlft.data.templates import ChatTemplate, get_template
from vlft.data.tiling import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ImageError, TilingSpec, \
    load_image, num_tiles, shared_tile_budget, tiles_for_image
from vlft.errors import ConfigError, DataError


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
    """What encoding the dataset dropped, by reason; training prints it, check-data lists each line."""

    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.dropped.most_common())
        return f"{self.kept} samples kept" + (f"; skipped {sum(self.dropped.values())} ({reasons})" if reasons else "")


class SupervisedDataset(Dataset):
    """Pre-encoded samples; `__getitem__` only decodes and tiles the images."""

    def __init__(self, samples: list[Sample], pipeline: DataPipeline, *, on_bad_sample: str = "skip"):
        self.pipeline = pipeline
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
                    reason = "longer than max_length"
                    problem = (f"{sample.where}: {len(encoded.input_ids)} tokens > data.max_length="
                               f"{pipeline.max_length} (never cut inside an image; dropped)")
            except (SampleError, ImageError) as exc:
                reason = "unreadable image" if isinstance(exc, ImageError) else "bad sample"
                problem = str(exc) if isinstance(exc, SampleError) else f"{sample.where}: {exc}"
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
        return {
            "input_ids": torch.tensor(encoded.input_ids, dtype=torch.long),
            "labels": torch.tensor(encoded.labels, dtype=torch.long),
            "pixel_values": self.pipeline.pixels(self.samples[index]),
        }


def _image_size(path: str, sample: Sample) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
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
    report = ReadReport(problems=[]) if spec.data.on_bad_sample == "skip" else None
    try:
        samples = read_all(sources, seed=spec.schedule.seed if seed is None else seed, report=report)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    dataset = SupervisedDataset(samples, pipeline_from_spec(spec, tokenizer, info),
                                on_bad_sample=spec.data.on_bad_sample)
    if report is not None and report.problems:
        dataset.stats.dropped["malformed record"] += len(report.problems)
        dataset.stats.problems[:0] = report.problems
    return dataset
