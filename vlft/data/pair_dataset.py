"""Preference pairs -> model inputs: each side encoded exactly as an SFT sample (same template, image tokens and
tiles: `encode_checked` with the pair's two answers), pixels decoded once per pair, and batches of the chosen
rows followed by the rejected rows (one forward for both sides).

A pair is kept or dropped whole: a side that is too long or cannot be encoded drops the pair, so the two sides
always stay together. Pairs are encoded in this process (not through the on-disk cache of `vlft.data.rows`):
preference sets are small next to SFT sets, and the cache's rows are single conversations.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from vlft.data.collate import pad_collate
from vlft.data.dataset import EncodeStats, SupervisedDataset, _add_read_report, _first_of, _sizes_tensor, encode_checked, \
    pipeline_from_spec, sources_of
from vlft.data.encode import IGNORE_INDEX
from vlft.data.formats import ReadReport, read_preference_pairs
from vlft.data.record import PreferencePair
from vlft.data.tiling import ImageError
from vlft.errors import DataError

SIDES = ("chosen", "rejected")


class PairDataset(SupervisedDataset):
    """Encoded preference pairs; item i is {"chosen": features, "rejected": features} of pair i.

    `samples` holds each kept pair's chosen conversation (images, `where`), `encoded` its (chosen, rejected)
    EncodedSamples, `lengths` the tokens of both sides (what a batch computes)."""

    def __init__(self, pairs: Sequence[PreferencePair], pipeline, *, on_bad_sample: str = "skip"):
        self.pipeline, self.on_bad_sample = pipeline, on_bad_sample
        self.stats = EncodeStats()
        self.pairs: list[PreferencePair] = []
        self.samples, self.encoded, self.tiles, self.sizes = [], [], [], []
        for pair in pairs:
            sides = [pair.as_sample(pair.chosen), pair.as_sample(pair.rejected)]
            encoded, sizes, counts, reason, problem = encode_checked(sides[0], pipeline, answers=sides)
            if problem is not None:
                if on_bad_sample == "error":
                    raise DataError(f"{problem} (data.on_bad_sample='error'; set 'skip' to drop such pairs)")
                self.stats.dropped[reason] += 1
                self.stats.problems.append(problem)
                continue
            self.pairs.append(pair)
            self.samples.append(sides[0])
            self.encoded.append(tuple(encoded))
            self.sizes.append(_sizes_tensor(sizes))
            self.tiles.append(sum(counts))
        self.stats.kept = len(self.pairs)
        if not self.pairs:
            raise DataError(f"no usable preference pairs ({self.stats.summary()}); first problem: "
                            f"{self.stats.problems[0] if self.stats.problems else 'the datasets are empty'}")

    @property
    def lengths(self) -> list[int]:
        return [sum(len(e.input_ids) for e in sides) for sides in self.encoded]

    def __getitem__(self, index: int) -> dict:
        try:
            pixels, ignored = self._pixels(index), False
        except (ImageError, OSError) as exc:
            if self.on_bad_sample == "error":
                raise DataError(f"{self.samples[index].where}: {exc} (while training; data.on_bad_sample='error'; "
                                "set 'skip' to train on without it)") from None
            # as SupervisedDataset: same ids and tiles (plans and resume unchanged), nothing learnt from the pair
            pixels, ignored = torch.zeros(int(self.tiles[index]), 3, self.pipeline.tiling.tile_size,
                                          self.pipeline.tiling.tile_size), True
        features = {}
        for side, encoded in zip(SIDES, self.encoded[index]):
            labels = torch.tensor(encoded.labels, dtype=torch.long)
            features[side] = {"input_ids": torch.tensor(encoded.input_ids, dtype=torch.long),
                              "labels": torch.full_like(labels, IGNORE_INDEX) if ignored else labels,
                              "pixel_values": pixels, "image_sizes": self.sizes[index]}
        return features


def pair_collate(features: list[dict], pad_token_id: int) -> dict:
    """The chosen rows of the batch, then its rejected rows (row i and row i + len(features) are one pair),
    right-padded to one rectangle, each row's images in order."""
    return pad_collate([f["chosen"] for f in features] + [f["rejected"] for f in features], pad_token_id)


def build_pair_dataset(spec, tokenizer, info, *, seed: int | None = None, **_cache_options) -> PairDataset:
    """Read and encode the spec's preference datasets (what `vlft train` feeds a preference objective).

    Takes (and ignores) `build_dataset`'s cache options: pairs are encoded here (see the module's doc)."""
    sources = sources_of(spec)
    seed = spec.schedule.seed if seed is None else seed
    pipeline = pipeline_from_spec(spec, tokenizer, info)
    report = ReadReport()
    try:
        pairs = read_preference_pairs(sources, seed=seed, report=report)
    except DataError:
        raise
    except ValueError as exc:  # a reader bug must still reach the user as one line naming the data
        raise DataError(f"{', '.join(s.path for s in sources)}: {exc}") from None
    if report.problems and spec.data.on_bad_sample == "error":
        raise DataError(_first_of(report.problems))
    if not pairs:
        first = report.problems[0] if report.problems else "the datasets are empty"
        raise DataError(f"no usable preference pairs; first problem: {first}")
    dataset = PairDataset(pairs, pipeline, on_bad_sample=spec.data.on_bad_sample)
    _add_read_report(dataset.stats, report.problems, report.warnings, kept_where={p.where for p in dataset.pairs})
    return dataset

