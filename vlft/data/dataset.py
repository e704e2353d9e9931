"""Samples -> model inputs: tokenized once up front (lengths known, bad samples counted), pixels on demand.

`build_dataset` encodes through the on-disk cache (`vlft.data.rows`: parallel `datasets.map`, memory-mapped
Arrow rows, built once and reopened by later runs, resumes, other ranks and check-data) and returns a
`CachedDataset`; `SupervisedDataset` is the same dataset encoded in this process into Python lists (small
sets, tests, and the comparison in tools/bench/bench_data.py). Both index the same samples in the same order.

Before training only image headers are read (a full decode of a large set would take too long); an image
that then fails to decode while training is skipped and counted (data.on_bad_sample='skip'), or stops the
run naming the sample and the image ('error').
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from vlft.data.anyres_grid import AnyResGrid
from vlft.data.encode import IGNORE_INDEX, EncodedSample, ImageTokens, SampleError, encode_sample
from vlft.data.formats import DatasetSource, ReadReport, read_all
from vlft.data.problems import BAD_SAMPLE, MALFORMED, MISSING_IMAGE, TOO_LONG, UNREADABLE_IMAGE
from vlft.data.record import Sample
from vlft.data.rows import EncodedRows, encode_rows
from vlft.data.templates import ChatTemplate, get_template
from vlft.data.tiling import ImageError, ImageNotFoundError, TilingSpec, load_image, num_tiles, read_image_header, \
    shared_tile_budget, split_grid, tiles_for_image
from vlft.errors import ConfigError, DataError
from vlft.families import family_named, normalisation_of

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
    #: The model's AnyRes packing (LLaVA-NeXT / OneVision): an image's tokens follow its size, not only its
    #: tiles (unpadded grid + one newline per row). None: every tile gives tokens_per_tile tokens.
    anyres: AnyResGrid | None = None

    @property
    def counts_by_size(self) -> bool:
        """Whether an image's tokens follow its size, not only its tile count (AnyRes packing, split grids)."""
        return self.anyres is not None or getattr(self.tiling, "mode", None) == "split"

    def tile_counts(self, sample: Sample) -> list[int]:
        """Tiles per image from the image headers only (no decoding); several images share the budget."""
        return self.tile_counts_for_sizes(sample, [_image_size(path, sample) for path in sample.images])

    def tile_counts_for_sizes(self, sample: Sample, sizes: Sequence[tuple[int, int]]) -> list[int]:
        """Tiles per image of (width, height) each; several images share the sample's tile budget."""
        budget = shared_tile_budget(sample.max_tiles or self.tiling.max_tiles, max(1, len(sample.images)))
        return [num_tiles(width, height, self.tiling, max_tiles=budget) for width, height in sizes]

    def tokens_for(self, width: int, height: int, tiles: int) -> int:
        """Image tokens of one image of (width, height) cut into ``tiles`` tiles, by the model's rule."""
        if self.anyres is None:
            return tiles * self.tokens_per_tile
        return self.anyres.token_count((height, width), self.tokens_per_tile)

    def image_run(self, width: int, height: int, tiles: int) -> int | tuple[int, ...]:
        """How one image is written in the ids: its context-token count (the run is start + context*n + end),
        or, for a family that marks each split tile (Idefics3 / SmolVLM), the image's whole run of ids."""
        if self.tiling.mode == "split" and self.image_tokens.split_run is not None:
            rows, cols = split_grid(width, height, self.tiling)
            return tuple(self.image_tokens.split_run(self.tokenizer, rows, cols, self.tokens_per_tile))
        return self.tokens_for(width, height, tiles)

    def image_tokens_per_image(self, sizes: Sequence[tuple[int, int]], counts: Sequence[int], *,
                               where: str = "prompt") -> list[int | tuple[int, ...]]:
        """image_run of each image ((width, height) and tiles each, in placeholder order)."""
        if self.anyres is not None and self.anyres.max_tiles_of_features is not None and len(sizes) > 1:
            # transformers' OneVision gives each image of a multi-image sample its base tile only
            # (batch_num_images); vlft's packing always tiles, so it would train on other features.
            raise SampleError(f"{where}: {len(sizes)} images in one sample: LLaVA-OneVision's multi-image "
                              "features (one tile per image) are not supported by vlft; use one image per sample",
                              BAD_SAMPLE)
        return [self.image_run(w, h, c) for (w, h), c in zip(sizes, counts)]

    def encode(self, sample: Sample, tile_counts: list[int] | None = None,
               sizes: Sequence[tuple[int, int]] | None = None) -> EncodedSample:
        """``sizes``: (width, height) of each image as shown (read from the headers when not given)."""
        counts = self.tile_counts(sample) if tile_counts is None else tile_counts
        if sizes is None:
            sizes = [_image_size(path, sample) for path in sample.images] if self.counts_by_size else \
                [(0, 0)] * len(counts)
        return encode_sample(sample, self.tokenizer, self.template, image_tokens=self.image_tokens,
                             tokens_per_image=self.image_tokens_per_image(sizes, counts, where=sample.where),
                             system_prompt=self.system_prompt)

    def image_sizes(self, sample: Sample) -> torch.Tensor:
        """[images, 2] (height, width) of each image as shown, from the headers: what AnyRes packing reads."""
        return _sizes_tensor([_image_size(path, sample) for path in sample.images])

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
    family = family_named(info.family)
    mean, std = normalisation_of(info)
    pinpoints = anyres_pinpoints(settings, info)
    tiling = TilingSpec(mode=settings.mode, tile_size=tile_size, min_tiles=settings.min_tiles,
                        max_tiles=settings.max_tiles, use_thumbnail=settings.use_thumbnail,
                        grid_pinpoints=pinpoints, mean=mean, std=std, longest_edge=settings.longest_edge or 0)
    try:
        template = get_template(spec.data.template)
    except KeyError as exc:
        raise ConfigError(f"data.template: {exc}") from None
    return DataPipeline(tokenizer=tokenizer, template=template, tiling=tiling,
                        image_tokens=family.image_tokens,
                        tokens_per_tile=info.tokens_per_tile, max_length=spec.data.max_length,
                        system_prompt=spec.data.system_prompt, anyres=info.anyres)


def anyres_pinpoints(settings, info) -> tuple[tuple[int, int], ...]:
    """data.tiling.grid_pinpoints, defaulting to an AnyRes model's own image_grid_pinpoints.

    An AnyRes model unpads its grid by its own pinpoints, so tiling by others would give features and image
    tokens that disagree: such a setting is refused."""
    given = tuple(tuple(int(v) for v in p) for p in settings.grid_pinpoints)
    own = tuple(tuple(p) for p in info.grid_pinpoints)
    if not own:
        return given
    if given and given != own:
        raise ConfigError(f"data.tiling.grid_pinpoints={[list(p) for p in given]} differ from the model's "
                          f"image_grid_pinpoints={[list(p) for p in own]}: the model unpads its grid by its own "
                          "pinpoints; leave data.tiling.grid_pinpoints unset to use them")
    return own


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
        self.sizes: list[torch.Tensor] = []  # [images, 2] (height, width) each, as the headers said
        for sample in samples:
            encoded, sizes, counts, reason, problem = encode_checked(sample, pipeline)
            if problem is not None:
                if on_bad_sample == "error":
                    raise DataError(f"{problem} (data.on_bad_sample='error'; set 'skip' to drop such samples)")
                self.stats.dropped[reason] += 1
                self.stats.problems.append(problem)
                continue
            self.samples.append(sample)
            self.sizes.append(_sizes_tensor(sizes))
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

    def _ids_and_labels(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.encoded[index]
        return (torch.tensor(encoded.input_ids, dtype=torch.long), torch.tensor(encoded.labels, dtype=torch.long))

    def __getitem__(self, index: int) -> dict:
        input_ids, labels = self._ids_and_labels(index)
        try:
            pixels = self._pixels(index)
        except (ImageError, OSError) as exc:
            sample = self.samples[index]
            if self.on_bad_sample == "error":
                raise DataError(f"{sample.where}: {exc} (while training; data.on_bad_sample='error'; set 'skip' "
                                "to train on without it)") from None
            # Same ids and tile count, so batch plans, packing and exact resume are unchanged; zero tiles
            # and every label ignored, so the sample teaches nothing.
            pixels = torch.zeros(int(self.tiles[index]), 3, self.pipeline.tiling.tile_size,
                                 self.pipeline.tiling.tile_size)
            labels = torch.full_like(labels, IGNORE_INDEX)
        # The header sizes the tokens were counted from (also for a failed image: its tile count holds).
        return {"input_ids": input_ids, "labels": labels, "pixel_values": pixels,
                "image_sizes": self._image_sizes(index)}

    def _image_sizes(self, index: int) -> torch.Tensor:
        return self.sizes[index]

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


def encode_checked(sample: Sample, pipeline: DataPipeline, answers: Sequence[Sample] = ()):
    """(encoded, header sizes, tile counts, None, None) of a sample training keeps, or (.., kind, "file:id: what")
    of one it drops (an image header, a bad sample, too long). ``answers``: more conversations with the same
    images (a preference pair's two sides), encoded with the same tiles; ``encoded`` is then one per answer."""
    encoded = sizes = counts = None
    try:
        sizes = [_image_size(path, sample) for path in sample.images]
        counts = pipeline.tile_counts(sample)
        encoded = [pipeline.encode(one, counts, sizes) for one in (answers or [sample])]
        longest = max(len(e.input_ids) for e in encoded)
        if longest > pipeline.max_length:
            return encoded, sizes, counts, TOO_LONG, (f"{sample.where}: {longest} tokens > data.max_length="
                                                      f"{pipeline.max_length} (never cut inside an image; dropped)")
    except SampleError as exc:
        return encoded, sizes, counts, exc.kind, str(exc)
    except ImageError as exc:
        kind = MISSING_IMAGE if isinstance(exc, ImageNotFoundError) else UNREADABLE_IMAGE
        return encoded, sizes, counts, kind, f"{sample.where}: {exc}"
    return (encoded if answers else encoded[0]), sizes, counts, None, None


def _image_size(path: str, sample: Sample) -> tuple[int, int]:
    """(width, height) as shown: after the EXIF rotation that load_image applies."""
    header = read_image_header(path)
    return header.width, header.height


def _sizes_tensor(sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
    """(width, height) pairs -> [images, 2] (height, width), transformers' image_sizes order."""
    return torch.tensor([[h, w] for w, h in sizes], dtype=torch.long).reshape(-1, 2)


class CachedDataset(SupervisedDataset):
    """The encoded rows of the cache (`vlft.data.rows`), memory-mapped: `__getitem__` reads one row.

    Same samples, order, ids, labels, pixels, stats and mid-run image handling as `SupervisedDataset`;
    `lengths`, `has_image` and `tiles` are numpy arrays, `samples` a lazy sequence (turns not kept).
    """

    def __init__(self, rows: EncodedRows, pipeline: DataPipeline, *, on_bad_sample: str = "skip"):
        self.pipeline, self.on_bad_sample, self.rows = pipeline, on_bad_sample, rows
        self.stats = EncodeStats()
        no_problem = rows.table.column("kind").is_null().to_numpy(zero_copy_only=False)
        lengths = rows.numpy("length")
        usable = no_problem & (lengths <= pipeline.max_length)  # per row
        order = rows.order
        for position in np.flatnonzero(~usable[order]):  # epoch order: a repeated bad row counts each time
            reason, problem = self._problem(int(order[position]))
            if on_bad_sample == "error":
                raise DataError(f"{problem} (data.on_bad_sample='error'; set 'skip' to drop such samples)")
            self.stats.dropped[reason] += 1
            self.stats.problems.append(problem)
        self.index = order[usable[order]]                      # dataset index -> row
        self._lengths = lengths[self.index].astype(np.int64)   # batch plans read these, never Python objects
        self.tiles = rows.numpy("tiles")[self.index].astype(np.int64)
        images = pc.list_value_length(rows.table.column("images")).to_numpy(zero_copy_only=False)
        self._has_image = images[self.index] > 0
        self.samples = _LazySamples(rows, self.index)
        self.stats.kept = len(self.index)
        if not len(self.index):
            raise DataError(f"no usable samples ({self.stats.summary()}); first problem: "
                            f"{self.stats.problems[0] if self.stats.problems else 'the datasets are empty'}")

    def _problem(self, row: int) -> tuple[str, str]:
        table = self.rows.table
        kind = table.column("kind")[row].as_py()
        if kind is not None:
            return kind, table.column("problem")[row].as_py()
        where = f"{table.column('source')[row].as_py()}:{table.column('id')[row].as_py()}"
        return TOO_LONG, (f"{where}: {int(self.rows.numpy('length')[row])} tokens > data.max_length="
                          f"{self.pipeline.max_length} (never cut inside an image; dropped)")

    def __len__(self) -> int:
        return len(self.index)

    @property
    def lengths(self) -> np.ndarray:
        return self._lengths

    @property
    def has_image(self) -> np.ndarray:
        return self._has_image

    @property
    def encoded(self) -> Sequence[EncodedSample]:
        """The rows as EncodedSamples (lazy; for inspection and tests: training reads `__getitem__`)."""
        return _LazyEncoded(self)

    def _ids_and_labels(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids, labels = self.rows.ids_and_labels(int(self.index[index]))
        return torch.from_numpy(ids), torch.from_numpy(labels)

    def _image_sizes(self, index: int) -> torch.Tensor:
        widths, heights = self.rows.image_sizes(int(self.index[index]))
        return _sizes_tensor(list(zip(widths, heights)))

    @property
    def cache_line(self) -> str:
        """One line for the run's log: where the cache is, built or opened."""
        return self.rows.cache_line


class _LazySamples(Sequence):
    def __init__(self, rows: EncodedRows, index: np.ndarray):
        self.rows, self.index = rows, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.rows.sample(int(self.index[i]))


class _LazyEncoded(Sequence):
    def __init__(self, dataset: CachedDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row = int(self.dataset.index[i])
        ids, labels = self.dataset.rows.ids_and_labels(row)
        return EncodedSample(input_ids=ids.tolist(), labels=labels.tolist(),
                             num_image_tokens=int(self.dataset.rows.numpy("image_tokens")[row]), image_spans=())


def sources_of(spec) -> list[DatasetSource]:
    """The spec's data.datasets as reader sources, each file checked to exist (one line naming it)."""
    sources = [DatasetSource(path=d.path, format=d.format, image_root=d.image_root, repeat=d.repeat,
                             max_tiles=d.max_tiles, name=d.name) for d in spec.data.datasets]
    if not sources:
        raise ConfigError("data.datasets is empty: add at least one dict(path=...)")
    missing = [s.path for s in sources if not Path(s.path).exists()]
    if missing:
        raise DataError(f"{', '.join(missing)}: dataset file not found (data.datasets[].path)")
    return sources


def build_dataset(spec, tokenizer, info, *, seed: int | None = None, cache: bool = True,
                  cache_dir: str | Path | None = None, num_proc: int | None = None, builder: bool = True,
                  wait: Callable[[], None] | None = None) -> SupervisedDataset:
    """Read every dataset of the spec and encode it (what `vlft train` feeds the model).

    Args:
        cache: encode through the on-disk cache (`vlft.data.rows`; default). False encodes every sample here,
            into Python lists, as before the cache (small sets, and the benchmark's comparison).
        cache_dir: the cache root (default $VLFT_CACHE_DIR or ~/.cache/vlft/datasets).
        num_proc: encoding processes (default: the usable CPUs, at most 8; one for a small set).
        builder, wait: with several processes, exactly one per cache folder builds (`rows.builds_cache`), and
            every process passes the same barrier as `wait`; the others then open what it built.
    """
    sources = sources_of(spec)
    seed = spec.schedule.seed if seed is None else seed
    pipeline = pipeline_from_spec(spec, tokenizer, info)
    on_bad = spec.data.on_bad_sample
    if not cache:
        return _encode_here(sources, pipeline, seed=seed, on_bad_sample=on_bad)
    try:
        rows = encode_rows(sources, pipeline, seed=seed, root=cache_dir, num_proc=num_proc, builder=builder,
                           wait=wait)
    except DataError:
        raise
    except ValueError as exc:  # a reader bug must still reach the user as one line naming the data
        raise DataError(f"{', '.join(s.path for s in sources)}: {exc}") from None
    problems = rows.read_problems
    if problems and on_bad == "error":
        raise DataError(_first_of(problems))
    if not rows.num_rows:
        stats = EncodeStats(dropped=Counter({MALFORMED: len(problems)}) if problems else Counter())
        raise DataError(f"no usable samples ({stats.summary()}); first problem: "
                        f"{problems[0] if problems else 'the datasets are empty'}")
    dataset = CachedDataset(rows, pipeline, on_bad_sample=on_bad)
    _add_read_report(dataset.stats, problems, rows.read_warnings, kept_where=_kept_where(dataset, rows))
    return dataset


def _encode_here(sources, pipeline, *, seed: int, on_bad_sample: str) -> SupervisedDataset:
    report = ReadReport()  # collected under 'error' too: the rows kept with a warning are counted either way
    try:
        samples = read_all(sources, seed=seed, report=report)
    except DataError:
        raise
    except ValueError as exc:  # a reader bug must still reach the user as one line naming the data
        raise DataError(f"{', '.join(s.path for s in sources)}: {exc}") from None
    if report.problems and on_bad_sample == "error":
        raise DataError(_first_of(report.problems))
    dataset = SupervisedDataset(samples, pipeline, on_bad_sample=on_bad_sample)
    _add_read_report(dataset.stats, report.problems, report.warnings, kept_where={s.where for s in dataset.samples})
    return dataset


def _first_of(problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more: vlft check-data lists them)" if len(problems) > 1 else ""
    return f"{problems[0]}{more} (data.on_bad_sample='error'; set 'skip' to drop such samples)"


def _kept_where(dataset: CachedDataset, rows: EncodedRows) -> set[str]:
    """"file:id" of the kept rows that have a read warning (only those: a million strings cost memory)."""
    if not rows.read_warnings:
        return set()
    wheres = rows.where()
    flagged = pc.is_in(wheres, value_set=pa.array(sorted({w.where for w in rows.read_warnings})))
    kept = np.zeros(rows.num_rows, dtype=bool)
    kept[dataset.index] = True
    mask = flagged.to_numpy(zero_copy_only=False) & kept
    return set(wheres.filter(pa.array(mask)).to_pylist())


def _add_read_report(stats: EncodeStats, problems: list[str], warnings, *, kept_where: set[str]) -> None:
    if problems:  # first, as they were found first (and check-data lists them first)
        stats.dropped = Counter({MALFORMED: len(problems), **stats.dropped})
        stats.problems[:0] = problems
    for warning in warnings:
        if warning.where in kept_where:  # a row dropped later is counted as dropped, not twice
            stats.warned[warning.kind] += 1
            stats.warnings.append(warning.line)
