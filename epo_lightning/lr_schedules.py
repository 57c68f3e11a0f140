"""The paper's learning-rate schedule: linear warmup, then cosine decay to a floor (paper Tables 2 and 3).

Tables 2 and 3 use AdamW with a cosine schedule (``num_cycles`` 0.5), warmup ratio 0.1 and min-LR ratio 0.2, stepped
once per RL step as verl steps its actor scheduler once per update. With ``p`` the post-warmup progress in [0, 1]:

    factor(s) = s / warmup                                                    for s < warmup
    factor(s) = max(0, r + (1 - r) * (1 + cos(2 pi * num_cycles * p)) / 2)     after, with r = min_lr_ratio
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from epo_lightning.errors import ConfigurationError


class WarmupCosineLR(LambdaLR):
    """Linear warmup from 0, then cosine decay from the base learning rate to ``min_lr_ratio`` of it.

    Args:
        optimizer: the wrapped optimizer.
        total_steps: scheduler steps of the whole run (K RL steps with ``model.lr_interval: epoch``).
        warmup_ratio: fraction of ``total_steps`` spent warming up (0.1 in the paper).
        min_lr_ratio: the floor, as a fraction of the base learning rate (0.2 in the paper).
        num_cycles: cosine cycles over the decay (0.5: one half-cosine from the top to the floor).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_ratio: float = 0.1,
        min_lr_ratio: float = 0.2,
        num_cycles: float = 0.5,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"WarmupCosineLR total_steps must be >= 1 (the run's scheduler steps), got {total_steps}.")
        if not 0.0 <= warmup_ratio < 1.0 or not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(
                f"WarmupCosineLR needs warmup_ratio in [0, 1) and min_lr_ratio in [0, 1], got {warmup_ratio} and "
                f"{min_lr_ratio}."
            )
        self.total_steps = total_steps
        self.warmup_steps = int(warmup_ratio * total_steps)
        self.min_lr_ratio = min_lr_ratio
        self.num_cycles = num_cycles
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        """The multiplier of the base learning rate at scheduler step ``step``."""
        if step < self.warmup_steps:
            return step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        cosine = (1.0 + math.cos(2.0 * math.pi * self.num_cycles * progress)) / 2.0
        return max(0.0, self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)


def _unchanged(step: int) -> float:
    return 1.0


def hold_critic_lr(scheduler: Any) -> None:
    """Hold the critic's parameter group (the optimizer's second) at its base learning rate.

    As the EPO code's critic (``warmup_style: constant``), while ``scheduler`` goes on scheduling the policy's group.
    """
    if not isinstance(scheduler, LambdaLR):
        raise ConfigurationError(
            "model.critic_lr_schedule: constant holds the critic's group of a LambdaLR scheduler (WarmupCosineLR is "
            f"one), and model.lr_scheduler is {type(scheduler).__name__}: use a LambdaLR, or critic_lr_schedule: "
            "policy."
        )
    scheduler.lr_lambdas[1] = _unchanged
    scheduler.optimizer.param_groups[1]["lr"] = scheduler.base_lrs[1]  # LambdaLR set it to base * factor(0)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
