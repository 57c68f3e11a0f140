"""``PhaseScheduler``: owns EPO's adaptive phase weight beta_k (paper Eq. 5).

    beta_k = 1 + exp(-gamma * k / k_mid),   k_mid = floor(K / 2),   gamma = 3

so beta goes from 2 at k = 0 to 1 + e^-3 ≈ 1.05 at mid-training and ≈ 1.0025 at K. ``constant`` and epoch-keyed
``milestones`` (shaped like Lightning's ``GradientAccumulationScheduler``) are alternatives. The value of step k + 1
is pushed in ``on_train_epoch_end`` of step k, since rollouts precede ``on_train_epoch_start`` (style-anchors P1), and
that of the starting step in ``on_train_start``, the first hook after a checkpoint restored the trainer's epoch.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override


class PhaseScheduler(Callback):
    """Set ``pl_module.beta`` every RL step (one Lightning epoch).

    Args:
        schedule: ``paper_exp`` (Eq. 5), ``constant`` (the paper's "W/O DW" ablation) or ``milestones``.
        gamma: decay rate of ``paper_exp``.
        total_steps: K; defaults to ``trainer.max_epochs``.
        value: beta of the ``constant`` schedule.
        milestones: ``{epoch: beta}`` for ``milestones``; epoch 0 defaults to 1.0.

    Raises:
        ValueError: on arguments outside their range, naming the argument to change.
    """

    def __init__(
        self,
        schedule: Literal["paper_exp", "constant", "milestones"] = "paper_exp",
        gamma: float = 3.0,
        total_steps: int | None = None,
        value: float = 1.0,
        milestones: dict[int, float] | None = None,
    ) -> None:
        if schedule not in ("paper_exp", "constant", "milestones"):
            raise ValueError(
                f"PhaseScheduler schedule must be 'paper_exp', 'constant' or 'milestones', got {schedule!r}."
            )
        if gamma < 0 or value < 0:
            raise ValueError(f"PhaseScheduler gamma and value must be >= 0, got gamma={gamma}, value={value}.")
        if total_steps is not None and total_steps < 1:
            raise ValueError(
                f"PhaseScheduler total_steps must be >= 1 (or null for trainer.max_epochs), got {total_steps}."
            )
        if schedule == "milestones":
            if not milestones:
                raise ValueError("PhaseScheduler(schedule='milestones') needs milestones, e.g. {0: 2.0, 50: 1.0}.")
            bad = {k: v for k, v in milestones.items() if not isinstance(k, int) or k < 0 or v < 0}
            if bad:
                raise ValueError(f"PhaseScheduler milestones need epochs >= 0 and betas >= 0; fix {bad}.")
            milestones = {0: 1.0, **milestones}
        elif milestones:
            raise ValueError("PhaseScheduler milestones only apply to schedule='milestones'.")
        self.schedule = schedule
        self.gamma = gamma
        self.total_steps = total_steps
        self.value = value
        self.milestones = dict(sorted((milestones or {}).items()))
        self.beta = self.get_beta(0, total_steps or 2)

    def get_beta(self, epoch: int, total_steps: int | None = None) -> float:
        """Beta for RL step ``epoch`` of ``total_steps`` (K)."""
        if self.schedule == "constant":
            return self.value
        if self.schedule == "milestones":
            return next(beta for start, beta in reversed(self.milestones.items()) if epoch >= start)
        steps = total_steps or self.total_steps
        if not steps:
            raise ValueError("PhaseScheduler(schedule='paper_exp') needs K: set total_steps or trainer.max_epochs.")
        k_mid = max(1, steps // 2)
        return 1.0 + math.exp(-self.gamma * epoch / k_mid)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "beta"):
            raise AttributeError(
                "PhaseScheduler needs the LightningModule to expose `beta` (float, read by training_step)."
            )
        if self.total_steps is None and self.schedule == "paper_exp" and stage == "fit":
            if trainer.max_epochs is None or trainer.max_epochs < 1:
                raise ValueError("PhaseScheduler(schedule='paper_exp') needs K: set total_steps or trainer.max_epochs.")
            self.total_steps = trainer.max_epochs

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply(pl_module, trainer.current_epoch)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply(pl_module, trainer.current_epoch + 1)

    def _apply(self, pl_module: pl.LightningModule, epoch: int) -> None:
        self.beta = self.get_beta(epoch)
        pl_module.beta = self.beta

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(schedule=self.schedule)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"total_steps": self.total_steps, "beta": self.beta}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("total_steps")
        if saved is not None and self.total_steps is not None and saved != self.total_steps:
            rank_zero_warn(
                f"PhaseScheduler: the checkpoint's run used K={saved} but this run has K={self.total_steps}, so beta "
                "follows the new schedule; set `total_steps` to keep the old one."
            )
        self.beta = state_dict.get("beta", self.beta)
