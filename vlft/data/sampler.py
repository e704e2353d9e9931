"""Which samples go together: length- and modality-grouped batches, or packed rows, deterministic by seed."""
from __future__ import annotations

import random

from vlft.data.collate import pack_rows


def plan_batches(lengths: list[int], has_image: list[bool], *, batch_size: int, seed: int, epoch: int,
                 group_by_length: bool = True, packing: bool = False, max_length: int = 4096) -> list:
    """One epoch's batches: lists of sample indices, or (packing) lists of rows of sample indices.

    Grouping: shuffle, cut into mega-batches of 50 batches, sort each by length (image samples and
    text-only samples in separate groups) so padding stays small but order stays random.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        chunk = batch_size * 50
        grouped = []
        for start in range(0, len(order), chunk):
            piece = order[start:start + chunk]
            piece.sort(key=lambda i: (has_image[i], lengths[i]), reverse=True)
            grouped.extend(piece)
        order = grouped
    if packing:
        rows = pack_rows(lengths, order, max_length)
        # rows of a batch are padded to the longest: batch rows of similar fill together
        rows.sort(key=lambda row: sum(lengths[i] for i in row), reverse=True)
        batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
        rng.shuffle(batches)
        return batches
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches
