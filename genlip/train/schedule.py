"""Learning rate as a function of samples seen: linear warm-up, then cosine to a floor."""

from __future__ import annotations

import math


def lr_at(samples: float, *, peak: float, floor: float, total: float, warmup_ratio: float) -> float:
    warmup = warmup_ratio * total
    if samples < warmup:
        return peak * samples / warmup
    progress = min(1.0, (samples - warmup) / max(total - warmup, 1.0))
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
