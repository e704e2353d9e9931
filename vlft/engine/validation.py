"""The held-out loss: a split of the training data (data.val_split) or separate sets (data.val_datasets).

The loss is token-weighted over the whole held-out set (every answer token counts once, whatever the
batch it fell in), summed over ranks, so one process and eight give the same number.
"""
from __future__ import annotations

import dataclasses
import random

import torch

from vlft.data.collate import pad_collate
from vlft.data.encode import IGNORE_INDEX
from vlft.data.dataset import build_dataset
from vlft.engine.distributed import all_reduce_sum
from vlft.errors import ConfigError


class SampleSubset:
    """Some samples of an encoded dataset, with the attributes batch planning and loading read."""

    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices = dataset, list(indices)
        self.pipeline, self.stats = dataset.pipeline, dataset.stats

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[self.indices[index]]

    @property
    def lengths(self) -> list[int]:
        every = self.dataset.lengths
        return [every[i] for i in self.indices]

    @property
    def has_image(self) -> list[bool]:
        every = self.dataset.has_image
        return [every[i] for i in self.indices]


def split_for_validation(dataset, fraction: float, seed: int) -> tuple[SampleSubset, SampleSubset]:
    """(train, held out): a seeded random `fraction` of the samples (at least one) is held out."""
    count = max(1, round(fraction * len(dataset)))
    if count >= len(dataset):
        raise ConfigError(f"data.val_split={fraction} leaves no training sample out of {len(dataset)}; "
                          "lower it or add data")
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    return SampleSubset(dataset, sorted(order[count:])), SampleSubset(dataset, sorted(order[:count]))


def training_and_validation(spec, dataset, tokenizer, info, *, encode=build_dataset):
    """The samples to train on and the held-out ones (None when the config asks for no validation).
    `encode` builds a dataset from a spec (the engine passes build_dataset with its cache barrier)."""
    if spec.data.val_datasets:
        val_spec = dataclasses.replace(spec, data=dataclasses.replace(
            spec.data, datasets=spec.data.val_datasets, val_datasets=[], val_split=0.0))
        return dataset, encode(val_spec, tokenizer, info)
    if spec.data.val_split > 0:
        return split_for_validation(dataset, spec.data.val_split, spec.schedule.seed)
    return dataset, None


def validation_loss(model, held_out, *, rank: int, world_size: int, device) -> float:
    """Mean loss per answer token over `held_out`, one sample per forward (no padding to weigh out). Every
    rank must call it and runs the same number of forwards (ZeRO-3 gathers parameters in each one), so the
    last round is padded with repeats of sample 0 that count for nothing."""
    slots = list(range(len(held_out))) + [-1] * (-len(held_out) % world_size)
    pad_id = held_out.pipeline.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else pad_id
    was_training = model.training
    model.eval()
    loss_sum = tokens = 0.0
    with torch.no_grad():
        for slot in slots[rank::world_size]:
            batch = pad_collate([held_out[max(slot, 0)]], pad_token_id=pad_id)
            batch.pop("num_tokens", None)
            answer_tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            loss = model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False).loss
            if slot >= 0 and answer_tokens:
                loss_sum += float(loss) * answer_tokens
                tokens += answer_tokens
    model.train(was_training)
    loss_sum, tokens = all_reduce_sum([loss_sum, tokens], device)
    return loss_sum / tokens if tokens else float("nan")
