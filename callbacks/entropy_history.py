"""``EntropyHistory``: owns EPO's entropy reference H_ref (arXiv 2509.22576, Eq. 3 and Algorithm 1).

W_k = {H̄_0, ..., H̄_{k-1}} holds the mean token entropy of every past RL step (one Lightning epoch each), and the
corridor reference of step k is

    H_ref(k) = (1/k) Σ_{m<k} H̄_m          (``mode="cumulative"``, the paper; no reference at k = 0)

with a sliding window (``mode="window"``) and an exponential moving average (``mode="ema"``) as options. H̄_k is
appended after step k's update, in ``on_train_epoch_end``, and the reference of step k + 1 is pushed to the module
right then, because the rollouts of step k + 1 are collected before ``on_train_epoch_start`` (style-anchors P1). The
reference of the first step is pushed in ``on_fit_start``, after a checkpoint restored the history.
"""

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import Metric
from typing_extensions import override


class EntropyHistory(Callback):
    """Record each RL step's mean token entropy H̄_k and set ``pl_module.entropy_reference`` (paper Eq. 3).

    The LightningModule must expose ``entropy_reference: float | None`` (read by ``training_step``) and
    ``train_entropy``, a ``torchmetrics.MeanMetric`` that ``training_step`` updates with the token entropy and that the
    module resets in ``on_train_epoch_start``; its ``compute()`` all-reduces across DDP ranks.

    Args:
        mode: ``"cumulative"`` mean of all past steps (the paper), ``"window"`` mean of the last ``window`` steps, or
            ``"ema"``, ``ref = ema_decay * ref + (1 - ema_decay) * H̄_k`` started at H̄_0.
        window: number of past steps averaged in ``"window"`` mode; required there and only there.
        ema_decay: weight of the previous reference in ``"ema"`` mode, in [0, 1).
        warmup_steps: number of recorded steps before a reference exists; 1 gives the paper's "no smoothing at k = 0".

    Raises:
        ValueError: If an argument is out of range; the message names the argument to change.
    """

    def __init__(
        self,
        mode: Literal["cumulative", "window", "ema"] = "cumulative",
        window: int | None = None,
        ema_decay: float = 0.9,
        warmup_steps: int = 1,
    ) -> None:
        if mode not in ("cumulative", "window", "ema"):
            raise ValueError(f"EntropyHistory `mode` must be 'cumulative', 'window' or 'ema', got {mode!r}.")
        if mode == "window" and (window is None or window < 1):
            raise ValueError(f"EntropyHistory(mode='window') needs `window` >= 1, got {window!r}.")
        if mode != "window" and window is not None:
            raise ValueError(f"EntropyHistory `window` only applies to mode='window' (mode is {mode!r}); drop it.")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"EntropyHistory `ema_decay` must be in [0, 1), got {ema_decay}.")
        if warmup_steps < 1:
            raise ValueError(f"EntropyHistory `warmup_steps` must be >= 1, got {warmup_steps}.")
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
        """H_ref of the step that follows ``history`` (this callback's own history by default).

        Args:
            history: mean entropies H̄_0, ..., H̄_{k-1} of the past steps.

        Returns:
            The reference, or None while fewer than ``warmup_steps`` values are recorded.
        """
        values = self.history if history is None else list(history)
        if len(values) < self.warmup_steps:
            return None
        if self.mode == "window":
            values = values[-self.window :]
        if self.mode != "ema":
            return sum(values) / len(values)
        ema = values[0]
        for value in values[1:]:
            ema = self.ema_decay * ema + (1.0 - self.ema_decay) * value
        return ema

    def append(self, value: float) -> None:
        """Record the mean token entropy H̄_k of the step just trained.

        Raises:
            ValueError: If ``value`` is NaN or infinite.
        """
        if not math.isfinite(value):
            raise ValueError(
                f"The mean entropy of RL step {len(self.history)} is {value}: training diverged or `training_step` "
                "fed `train_entropy` a non-finite value (check the learning rate, gradient clipping and the dtype)."
            )
        self.history.append(float(value))

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage == "fit" and not (
            hasattr(pl_module, "entropy_reference") and isinstance(getattr(pl_module, "train_entropy", None), Metric)
        ):
            raise AttributeError(
                f"EntropyHistory needs {type(pl_module).__name__} to expose `entropy_reference` (float | None, read "
                "by training_step) and `train_entropy` (a torchmetrics.MeanMetric that training_step updates with the "
                "token entropy); add them or remove the callback."
            )

    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        pl_module.entropy_reference = self.reference()

    @override
    def on_train_start(self, trainer: "pl.Trainer", *_: Any) -> None:
        if len(self.history) != trainer.current_epoch:
            rank_zero_warn(
                f"EntropyHistory holds {len(self.history)} entropies but training starts at RL step "
                f"{trainer.current_epoch}: the checkpoint carries no history for {self.state_key}, so H_ref restarts."
            )

    @override
    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not pl_module.train_entropy.update_called:
            # A fit resumed from a checkpoint saved after the epoch's last batch but before its end (ModelCheckpoint
            # at validation end) re-enters here without training: H̄_k died with the previous process.
            rank_zero_warn(
                f"EntropyHistory: no entropy was recorded in RL step {trainer.current_epoch}, so W_k skips it. "
                "Resume from checkpoints saved at train epoch end (`ModelCheckpoint(save_on_train_epoch_end=True)`)."
            )
        else:
            self.append(float(pl_module.train_entropy.compute()))  # compute() all-reduces: call it on every rank
        pl_module.entropy_reference = self.reference()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [float(value) for value in state_dict.get("history", [])]
