"""Which samples go together: length- and modality-grouped batches, or packed rows, deterministic by seed."""
from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from vlft.data.collate import pack_rows


def plan_batches(lengths: Sequence[int] | np.ndarray, has_image: Sequence[bool] | np.ndarray, *, batch_size: int,
                 seed: int, epoch: int, group_by_length: bool = True, packing: bool = False,
                 max_length: int = 4096) -> list:
    """One epoch's batches: lists of sample indices, or (packing) lists of rows of sample indices.

    ``lengths`` and ``has_image`` are numpy arrays (a dataset's columns) or lists. Grouping: shuffle, cut into
    mega-batches of 50 batches, sort each by length (image samples and text-only samples in separate groups)
    so padding stays small but order stays random. The sort is numpy's stable lexsort on (has_image, length)
    descending: the same plan as Python's stable ``sort(reverse=True)``, without a Python key per sample.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    length_array = np.asarray(lengths, dtype=np.int64)
    if group_by_length:
        image_array = np.asarray(has_image, dtype=np.int64)
        shuffled = np.asarray(order, dtype=np.int64)
        chunk = batch_size * 50
        pieces = []
        for start in range(0, len(shuffled), chunk):
            piece = shuffled[start:start + chunk]
            pieces.append(piece[np.lexsort((-length_array[piece], -image_array[piece]))])
        order = np.concatenate(pieces).tolist() if pieces else []
    lengths = length_array.tolist()  # plain ints: packing below and callers sum them
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
