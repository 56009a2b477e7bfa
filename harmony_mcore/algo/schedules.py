"""Learning-rate and consensus-strategy schedules (pure functions of the optimizer step)."""

from __future__ import annotations

import math


def lr_at(step: int, *, base_lr: float, total_steps: int, warmup_ratio: float = 0.1,
          min_lr: float = 0.0, warmup_init: float | None = None) -> float:
    """Linear warmup over `warmup_ratio * total_steps` steps, then cosine decay to `min_lr`.

    `step` counts optimizer steps from 0. `warmup_init` is the lr of step 0 of a warmup: None
    (ours) ramps lr/warmup_steps, 2 lr/warmup_steps, .. up to lr, so no step is wasted at lr 0;
    0.0 is the reference's (verl's, and Megatron's `init_lr`) ramp init + (lr - init) step/warmup,
    whose first update has lr 0.
    """
    warmup = int(warmup_ratio * total_steps)
    if warmup > 0 and step < warmup:
        if warmup_init is not None:
            return warmup_init + (base_lr - warmup_init) * step / warmup
        return base_lr * (step + 1) / warmup
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def strategy_at(step: int, *, strategy: str, warmup_strategy: str | None, warmup_steps: int) -> str:
    """Hard switch: `warmup_strategy` for the first `warmup_steps` optimizer steps, then `strategy`."""
    if warmup_strategy and step < warmup_steps:
        return warmup_strategy
    return strategy
