"""``EntropyHistory``: owns EPO's entropy reference H_ref (paper Eq. 3 and Algorithm 1).

W_k = {H̄_0, ..., H̄_{k-1}} holds the mean token entropy of every past RL step; the corridor reference of step k is

    H_ref(k) = (1/k) Σ_{m<k} H̄_m          (``mode="cumulative"``, the paper; none at k = 0)

with a sliding window (``mode="window"``) and an exponential moving average (``mode="ema"``) as options. H̄_k is
appended after step k's update (in ``on_train_epoch_end``), and the reference for step k + 1 is pushed to the module
right then: rollouts of step k + 1 are collected before ``on_train_epoch_start`` (style-anchors P1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch import Callback
from typing_extensions import override

REQUIRED_ATTRIBUTES = ("entropy_reference", "train_entropy")


class EntropyHistory(Callback):
    """Track per-step mean entropy and set ``pl_module.entropy_reference``.

    Args:
        mode: ``cumulative`` mean of all past steps (paper), ``window`` mean of the last ``window`` steps, or ``ema``.
        window: steps in the sliding window (``mode="window"`` only).
        ema_decay: weight of the old reference in ``ema`` mode, ``ref = d * ref + (1 - d) * H̄_k``.
        warmup_steps: recorded steps before a reference exists (1 = from step 1 on, as in the paper).

    Raises:
        ValueError: on arguments outside their range, naming the argument to change.
    """

    def __init__(
        self,
        mode: Literal["cumulative", "window", "ema"] = "cumulative",
        window: int | None = None,
        ema_decay: float = 0.9,
        warmup_steps: int = 1,
    ) -> None:
        if mode not in ("cumulative", "window", "ema"):
            raise ValueError(f"EntropyHistory mode must be 'cumulative', 'window' or 'ema', got {mode!r}.")
        if mode == "window" and (window is None or window < 1):
            raise ValueError(f"EntropyHistory(mode='window') needs window >= 1, got {window!r}.")
        if mode != "window" and window is not None:
            raise ValueError(f"EntropyHistory window={window} only applies to mode='window'; drop it or set the mode.")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"EntropyHistory ema_decay must be in [0, 1), got {ema_decay}.")
        if warmup_steps < 1:
            raise ValueError(f"EntropyHistory warmup_steps must be >= 1, got {warmup_steps}.")
        self.mode = mode
        self.window = window
        self.ema_decay = ema_decay
        self.warmup_steps = warmup_steps
        self.history: list[float] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(mode=self.mode, window=self.window)

    def reference(self, history: Sequence[float] | None = None) -> float | None:
        """H_ref for the step after ``history`` (this callback's own history by default); None during warm-up."""
        values = list(self.history if history is None else history)
        if len(values) < self.warmup_steps:
            return None
        if self.mode == "cumulative":
            return sum(values) / len(values)
        if self.mode == "window":
            recent = values[-self.window :]
            return sum(recent) / len(recent)
        ema = values[0]
        for value in values[1:]:
            ema = self.ema_decay * ema + (1.0 - self.ema_decay) * value
        return ema

    def append(self, value: float) -> None:
        """Record the mean entropy of one RL step."""
        if not math.isfinite(value):
            raise ValueError(
                f"the mean entropy of RL step {len(self.history)} is {value}: training has diverged (check the "
                "learning rate, gradient clipping and the policy's dtype)."
            )
        self.history.append(float(value))

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        missing = [name for name in REQUIRED_ATTRIBUTES if not hasattr(pl_module, name)]
        if missing:
            raise AttributeError(
                f"EntropyHistory needs the LightningModule to expose {missing}: `entropy_reference` (float | None, "
                "read by training_step) and `train_entropy` (a torchmetrics.MeanMetric of the step's token entropy)."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.entropy_reference = self.reference()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.append(float(pl_module.train_entropy.compute()))  # compute() all-reduces across ranks
        pl_module.entropy_reference = self.reference()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [float(v) for v in state_dict.get("history", [])]
