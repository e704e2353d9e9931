"""Which micro-batches each rank runs in each epoch, and the DataLoaders over them."""
from __future__ import annotations

import functools

import torch
from torch.utils.data import DataLoader

from vlft.data.collate import pack_collate, pad_collate, token_efficiency
from vlft.data.pair_dataset import pair_collate
from vlft.data.sampler import plan_batches
from vlft.engine.checkpoints import TrainerState
from vlft.specs import ExperimentSpec


class EpochPlans:
    """This rank's micro-batches of each epoch, and DataLoaders over them.

    `plan_batches` cuts the epoch into batch-groups of micro x world-size samples (or packed rows); rank r
    takes every world-size-th member of each group, so ranks see disjoint, length-matched micro-batches
    and the plan needs no communication. Groups too small to give every rank a share, and micro-batches
    that would leave a partial accumulation at the epoch's end, are dropped (the next epoch reshuffles).
    """

    def __init__(self, dataset, spec: ExperimentSpec, *, rank: int, world_size: int):
        self.dataset, self.spec, self.rank, self.world_size = dataset, spec, rank, world_size
        self.lengths, self.has_image = dataset.lengths, dataset.has_image
        self._cache: dict[int, list] = {}

    def groups(self, epoch: int, packing: bool | None = None) -> list:
        packing = self.spec.data.packing if packing is None else packing
        groups = plan_batches(self.lengths, self.has_image,
                              batch_size=self.spec.schedule.micro_batch_size * self.world_size,
                              seed=self.spec.schedule.seed, epoch=epoch, group_by_length=self.spec.data.group_by_length,
                              packing=packing, max_length=self.spec.data.packed_row_length)
        return [g for g in groups if len(g) >= self.world_size]

    def for_rank(self, epoch: int) -> list:
        if epoch not in self._cache:
            mine = [group[self.rank::self.world_size] for group in self.groups(epoch)]
            self._cache = {epoch: mine[:len(mine) - len(mine) % self.spec.schedule.gradient_accumulation]}
        return self._cache[epoch]

    def samples_in(self, micro_batch: list) -> int:
        return sum(len(row) for row in micro_batch) if self.spec.data.packing else len(micro_batch)

    def progress(self, state: TrainerState) -> float:
        """Epochs done, as a fraction (the current epoch's share from the position inside it)."""
        return state.epoch + state.batch / max(1, len(self.for_rank(state.epoch)))

    def loader(self, batches: list, *, start: int, epoch: int):
        pad_id = self.dataset.pipeline.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else 0
        packing = self.spec.data.packing
        # A private generator: creating the loader must not draw from the global RNG (dropout), or a
        # resumed run would diverge from an uninterrupted one.
        generator = torch.Generator().manual_seed(self.spec.schedule.seed * 1000 + epoch)
        collate = pack_collate if packing else pad_collate if self.spec.schedule.objective == "sft" else pair_collate
        return DataLoader(_Rows(self.dataset) if packing else self.dataset, batch_sampler=batches[start:],
                          collate_fn=functools.partial(collate, pad_token_id=pad_id),
                          num_workers=self.spec.data.num_workers, generator=generator)

    def token_budget(self, steps_per_epoch: int) -> str:
        """Real tokens per optimizer step, and how much of the computed rectangle is real: padded vs packed."""
        used = self.groups(0)[:steps_per_epoch * self.spec.schedule.gradient_accumulation]
        rows = [row for g in used for row in g]
        tokens = sum(self.lengths[i] for row in rows for i in (row if self.spec.data.packing else [row]))
        mine = token_efficiency(self.lengths, used, self.spec.data.packing)
        line = f"tokens: ~{tokens / steps_per_epoch:,.0f} per step; "
        if len(self.lengths) > 20_000:  # the other plan would take a while to compute
            return line + f"{'packing' if self.spec.data.packing else 'padding'} efficiency {mine:.1%}"
        other = token_efficiency(self.lengths, self.groups(0, packing=not self.spec.data.packing),
                                 not self.spec.data.packing)
        pad, pack = (other, mine) if self.spec.data.packing else (mine, other)
        return line + (f"efficiency with padding {pad:.1%}, with packing {pack:.1%} "
                       f"(data.packing={self.spec.data.packing})")


class _Rows:
    """Packing: the DataLoader fetches a row (a tuple of sample indices) as one item."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, row) -> list[dict]:
        return [self.dataset[i] for i in row]

    def __len__(self) -> int:
        return len(self.dataset)
