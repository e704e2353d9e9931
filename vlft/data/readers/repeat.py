"""A dataset's repeat (a config's `repeat`, an InternVL meta's `repeat_time`): checked, and applied to its samples."""

from __future__ import annotations

import math
import random

from vlft.data.readers.source import DataFormatError


def repeat(items: list, times: float, *, seed: int, key: str) -> list:
    """`int(times)` full copies, then a seeded, order-keeping subset of floor(frac * n) items."""
    n = len(items)
    full = int(times)
    # floor with a tolerance: 2.3 * 10 must keep 23 rows even though 2.3 - 2 = 0.2999...
    total = math.floor(times * n + 1e-6)
    extra = max(0, total - full * n)
    out = items * full
    if extra:
        rng = random.Random(f"vlft-repeat:{seed}:{key}")  # str seeds are stable across processes
        out.extend(items[i] for i in sorted(rng.sample(range(n), extra)))
    return out


def check_repeat(times, where: str) -> None:
    if not (isinstance(times, (int, float)) and math.isfinite(times) and times >= 0):
        raise DataFormatError(f"{where}: repeat must be a finite number >= 0, got {times!r}")
