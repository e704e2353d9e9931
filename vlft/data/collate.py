"""Batches: pad samples to a rectangle, or pack several samples per row with restarting positions."""
from __future__ import annotations

import torch

from vlft.data.encode import IGNORE_INDEX


def pad_collate(features: list[dict], pad_token_id: int) -> dict:
    """One sample per row, right-padded. pixel_values: every tile of the batch, in order [tiles, 3, S, S]."""
    longest = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[row, :n] = f["input_ids"]
        labels[row, :n] = f["labels"]
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
            "pixel_values": torch.cat([f["pixel_values"] for f in features]),
            **_image_sizes(features), "num_tokens": int(attention_mask.sum())}


def _image_sizes(features: list[dict]) -> dict:
    """{"image_sizes": [all images, 2] (height, width) in pixel order}, when the samples carry them (AnyRes
    packing reads them; the other families ignore them)."""
    if not any("image_sizes" in f for f in features):
        return {}
    return {"image_sizes": torch.cat([f.get("image_sizes", torch.zeros(0, 2, dtype=torch.long)) for f in features])}


def pack_collate(rows: list[list[dict]], pad_token_id: int) -> dict:
    """Several samples per row; position ids restart at each sample and no attention mask is passed, so
    transformers builds a block-diagonal causal mask (eager/sdpa) or uses varlen kernels (flash attention).

    The first label of every sample is ignored: in a packed row it would be the target of the previous
    sample's last token, which a sample run alone never predicts.
    """
    lengths = [sum(len(f["input_ids"]) for f in row) for row in rows]
    longest = max(lengths)
    input_ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), longest), dtype=torch.long)
    pixels, samples = [], []
    for r, row in enumerate(rows):
        start = 0
        for f in row:
            n = len(f["input_ids"])
            input_ids[r, start:start + n] = f["input_ids"]
            labels[r, start:start + n] = f["labels"]
            labels[r, start] = IGNORE_INDEX
            position_ids[r, start:start + n] = torch.arange(n)
            pixels.append(f["pixel_values"])
            samples.append(f)
            start += n
        # padding continues as one more "sample" that attends only to itself and is never a target
        position_ids[r, start:] = torch.arange(longest - start)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
            "pixel_values": torch.cat(pixels), **_image_sizes(samples), "num_tokens": sum(lengths)}


def pack_rows(lengths: list[int], order: list[int], max_length: int) -> list[list[int]]:
    """Greedy first-fit over `order`: rows of sample indices whose lengths sum to <= max_length.

    >>> pack_rows([5, 3, 4, 2], [0, 1, 2, 3], 8)
    [[0, 1], [2, 3]]
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for index in order:
        n = lengths[index]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(index)
                room[r] -= n
                break
        else:
            rows.append([index])
            room.append(max_length - n)
    return rows


def token_efficiency(lengths: list[int], batches: list[list[list[int]]] | list[list[int]], packed: bool) -> float:
    """Real tokens / computed tokens (rows x longest row) for a batching plan."""
    real = computed = 0
    for batch in batches:
        if packed:
            row_lengths = [sum(lengths[i] for i in row) for row in batch]
        else:
            row_lengths = [lengths[i] for i in batch]
        real += sum(row_lengths)
        computed += len(row_lengths) * max(row_lengths)
    return real / computed if computed else 1.0
