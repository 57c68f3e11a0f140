"""``EntropyHistory``: owns EPO's entropy reference H_ref (arXiv 2509.22576, Eq. 3 and Algorithm 1).

W_k = {H̄_0, ..., H̄_{k-1}} holds the mean token entropy of every past RL step (one Lightning epoch each), and the
corridor reference of step k is

    H_ref(k) = (1/k) Σ_{m<k} H̄_m          (``mode="cumulative"``, the paper; no reference at k = 0)

with a sliding window (``mode="window"``) and an exponential moving average (``mode="ema"``) as options. H̄_k is
appended after step k's update, in ``on_train_epoch_end``, and the reference of step k + 1 is pushed to the module
right then, because the rollouts of step k + 1 are collected before ``on_train_epoch_start`` (docs/architecture.md). The
reference of the first step is pushed in ``on_fit_start``, after a checkpoint restored the history.

Two switches reproduce the released code's history (docs/algorithm.md, section 3):

- ``per_turn=True`` keeps one mean per turn index, and each row is compared with the reference of its own turn
  index (a turn index never seen before falls back to the mean over all recorded values).
- ``include_current=True`` records, at the start of step k, the entropy of step k's rollouts (measured while they are
  scored, before the update) and includes it in step k's own reference, as the code does; the paper records the
  training-time entropy of step k after its update and uses it from step k + 1 on.

The code's left-padding of the per-turn list to ``max_steps`` (which shifts turn indices when a batch ends early) and
its averaging over finished environments are bugs, not reproduced: turns are indexed from the start of the episode.
"""

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import Metric
from typing_extensions import override


class EntropyHistory(Callback):
    """Record each RL step's mean token entropy H̄_k and set ``pl_module.entropy_reference`` (paper Eq. 3).

    The LightningModule must expose ``entropy_reference`` (read by ``training_step``) and the metric this callback
    reads: ``train_entropy`` (a ``torchmetrics.MeanMetric`` that ``training_step`` updates with the token entropy and
    the module resets in ``on_train_epoch_start``), or ``train_turn_entropy`` with ``per_turn``, or
    ``rollout_entropy`` / ``rollout_turn_entropy`` with ``include_current`` (filled while the step's rollouts are
    scored). Their ``compute()`` all-reduces across DDP ranks. ``EPOModule`` has all four.

    Args:
        mode: ``"cumulative"`` mean of all past steps (the paper), ``"window"`` mean of the last ``window`` steps, or
            ``"ema"``, ``ref = ema_decay * ref + (1 - ema_decay) * H̄_k`` started at H̄_0.
        window: number of past steps averaged in ``"window"`` mode; required there and only there.
        ema_decay: weight of the previous reference in ``"ema"`` mode, in [0, 1).
        warmup_steps: number of recorded steps before a reference exists; 1 gives the paper's "no smoothing at k = 0"
            (with ``include_current`` the step's own entropy counts, so 1 gives a reference from k = 0, as the code).
        per_turn: keep one reference per turn index (a tensor) instead of a scalar.
        include_current: record the step's rollout entropy at its start and include it in its own reference.

    Raises:
        ValueError: If an argument is out of range; the message names the argument to change.
    """

    #: The module attributes this callback sets; two callbacks that set the same one are refused at fit start.
    controls: tuple[str, ...] = ("entropy_reference",)

    def __init__(
        self,
        mode: Literal["cumulative", "window", "ema"] = "cumulative",
        window: int | None = None,
        ema_decay: float = 0.9,
        warmup_steps: int = 1,
        per_turn: bool = False,
        include_current: bool = False,
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
        self.per_turn = per_turn
        self.include_current = include_current
        self.history: list[float | list[float]] = []
        #: RL steps without any entropy (no usable episode on any rank, or none recorded), which W_k skips
        self.skipped_steps = 0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            mode=self.mode, window=self.window, per_turn=self.per_turn, include_current=self.include_current
        )

    def reference(self, history: Sequence[float | Sequence[float]] | None = None) -> float | torch.Tensor | None:
        """H_ref of the step that follows ``history`` (this callback's own history by default).

        Args:
            history: mean entropies H̄_0, ..., H̄_{k-1} of the past steps; with ``per_turn``, one list per step of
                the mean per turn index (NaN where the step had no such turn).

        Returns:
            The reference (a float, or a float32 tensor per turn index with ``per_turn``), or None while fewer than
            ``warmup_steps`` values are recorded.
        """
        values = self.history if history is None else list(history)
        if len(values) < self.warmup_steps:
            return None
        if self.mode == "window":
            values = values[-self.window :]
        if not self.per_turn:
            return self._combine(torch.tensor(values, dtype=torch.float64).unsqueeze(1)).item()
        width = max(len(v) for v in values)
        table = torch.full((len(values), width), math.nan, dtype=torch.float64)
        for row, value in enumerate(values):
            table[row, : len(value)] = torch.tensor(value, dtype=torch.float64)
        reference = self._combine(table)
        overall = table[~table.isnan()].mean()  # for turn indices no recorded step reached
        return torch.where(reference.isnan(), overall, reference).float()

    def _combine(self, table: torch.Tensor) -> torch.Tensor:
        """Cumulative / window mean or EMA down the steps (rows) of ``[k, n]``, ignoring NaN entries."""
        if self.mode != "ema":
            return table.nanmean(dim=0)
        ema = table[0]
        for value in table[1:]:
            blended = self.ema_decay * ema + (1.0 - self.ema_decay) * value
            ema = torch.where(ema.isnan(), value, torch.where(value.isnan(), ema, blended))
        return ema

    def append(self, value: float | torch.Tensor) -> None:
        """Record the mean token entropy H̄_k of a step (a ``[num_turns]`` tensor with ``per_turn``).

        Raises:
            ValueError: If ``value`` is infinite, NaN (a per-turn value may be NaN only at turn indices not reached).
        """
        values = torch.as_tensor(value, dtype=torch.float64).flatten()
        finite = values[~values.isnan()]
        if finite.numel() == 0 or not bool(finite.isfinite().all()):
            raise ValueError(
                f"The mean entropy of RL step {len(self.history)} is {value}: training diverged or the module fed its "
                "entropy metric a non-finite value (check the learning rate, gradient clipping and the dtype)."
            )
        self.history.append(values.tolist() if self.per_turn else float(values.item()))

    @property
    def metric_name(self) -> str:
        """The module metric this callback records: ``{train,rollout}_{,turn_}entropy``."""
        return f"{'rollout' if self.include_current else 'train'}_{'turn_' if self.per_turn else ''}entropy"

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        name = self.metric_name
        if stage == "fit" and not (
            hasattr(pl_module, "entropy_reference") and isinstance(getattr(pl_module, name, None), Metric)
        ):
            raise AttributeError(
                f"EntropyHistory needs {type(pl_module).__name__} to expose `entropy_reference` (read by "
                f"training_step) and `{name}` (a torchmetrics.Metric of the token entropy, see the class docstring); "
                "add them or remove the callback."
            )

    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        pl_module.entropy_reference = self.reference()

    @override
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # Strategies that restore a checkpoint after setup (ModelParallelStrategy/FSDP2, DeepSpeed) load this
        # callback's history after on_fit_start: push the reference again, before the first update.
        pl_module.entropy_reference = self.reference()
        if len(self.history) + self.skipped_steps != trainer.current_epoch:
            rank_zero_warn(
                f"EntropyHistory holds {len(self.history)} entropies but training starts at RL step "
                f"{trainer.current_epoch}: the checkpoint carries no history for {self.state_key}, so H_ref restarts."
            )

    @override
    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.include_current:
            self._record(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self.include_current:
            self._record(trainer, pl_module)

    def _record(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        metric = getattr(pl_module, self.metric_name)
        if not getattr(pl_module, "trains_this_step", True):  # the same on every rank
            self.skipped_steps += 1
            rank_zero_warn(
                f"EntropyHistory: RL step {trainer.current_epoch} had no usable episode on any rank, so it has no "
                "entropy and W_k skips it."
            )
        elif not metric.update_called:
            self.skipped_steps += 1
            # A fit resumed from a checkpoint saved after the epoch's last batch but before its end (ModelCheckpoint
            # at validation end) re-enters here without training: H̄_k died with the previous process.
            rank_zero_warn(
                f"EntropyHistory: no entropy was recorded in RL step {trainer.current_epoch}, so W_k skips it. "
                "Resume from checkpoints saved at train epoch end (`ModelCheckpoint(save_on_train_epoch_end=True)`)."
            )
        else:
            self.append(metric.compute())  # compute() all-reduces: call it on every rank
        pl_module.entropy_reference = self.reference()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "skipped_steps": self.skipped_steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [list(map(float, v)) if self.per_turn else float(v) for v in state_dict.get("history", [])]
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
