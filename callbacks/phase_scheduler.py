"""``PhaseScheduler``: owns EPO's adaptive phase weight beta_k (arXiv 2509.22576, Eq. 5).

    beta_k = 1 + exp(-gamma * k / k_mid),   k_mid = floor(K / 2),   gamma = 3

so beta goes from 2 at k = 0 to 1 + e^-3 ≈ 1.0498 at mid-training and ≈ 1.0025 at K. A ``constant`` beta (the paper's
"W/O DW" ablation), epoch-keyed ``milestones`` (shaped like Lightning's ``GradientAccumulationScheduler``) and the
released code's ``code_piecewise`` weight (docs/algorithm.md, section 4) are alternatives:

    w_k = 1 - 0.2 * (1 - exp(-2k / half))             for k <= half = K // 2
    w_k = 0.8 * exp(-3 (k - half) / (K - half))         for k > half,   with K hard-coded to 150 in the code.

One Lightning epoch is one RL step k. The beta of step k + 1 is pushed in ``on_train_epoch_end`` of step k, since its
rollouts are collected before ``on_train_epoch_start``, and that of the first step in ``on_fit_start`` and again in
``on_train_start``, where the step a checkpoint restored is known under every strategy (some restore after setup).
"""

import math
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

#: The released code's hard-coded total of RL steps in its weight schedule (``max_epochs = 150``).
CODE_MAX_EPOCHS = 150


class PhaseScheduler(Callback):
    """Set ``pl_module.beta``, the weight of the smoothing term, at every RL step (paper Eq. 5).

    The LightningModule must expose ``beta: float``, read by ``training_step``.

    Args:
        schedule: ``"paper_exp"`` (Eq. 5), ``"constant"``, ``"milestones"`` or ``"code_piecewise"`` (released code).
        gamma: decay rate of ``"paper_exp"``, >= 0.
        total_steps: K, the number of RL steps of ``"paper_exp"`` (None reads ``trainer.max_epochs``) and of
            ``"code_piecewise"`` (None is the code's hard-coded 150, whatever the run length).
        value: beta of the ``"constant"`` schedule, >= 0.
        milestones: ``{epoch: beta}`` of the ``"milestones"`` schedule, each beta holding from its epoch on; epoch 0
            defaults to 1.0.

    Raises:
        ValueError: If an argument is out of range; the message names the argument to change.
    """

    #: The module attributes this callback sets; two callbacks that set the same one are refused at fit start.
    controls: tuple[str, ...] = ("beta",)

    def __init__(
        self,
        schedule: Literal["paper_exp", "constant", "milestones", "code_piecewise"] = "paper_exp",
        gamma: float = 3.0,
        total_steps: int | None = None,
        value: float = 1.0,
        milestones: dict[int, float] | None = None,
    ) -> None:
        if schedule not in ("paper_exp", "constant", "milestones", "code_piecewise"):
            raise ValueError(
                "PhaseScheduler `schedule` must be 'paper_exp', 'constant', 'milestones' or 'code_piecewise', "
                f"got {schedule!r}."
            )
        if not 0.0 <= gamma < math.inf:
            raise ValueError(f"PhaseScheduler `gamma` must be a finite number >= 0, got {gamma}.")
        if total_steps is not None and total_steps < 1:
            raise ValueError(
                f"PhaseScheduler `total_steps` must be >= 1, or None for trainer.max_epochs; got {total_steps}."
            )
        if not 0.0 <= value < math.inf:
            raise ValueError(f"PhaseScheduler `value` must be a finite number >= 0, got {value}.")
        if schedule == "milestones":
            if not milestones:
                raise ValueError("PhaseScheduler(schedule='milestones') needs `milestones`, e.g. {0: 2.0, 50: 1.0}.")
            bad = {k: v for k, v in milestones.items() if not isinstance(k, int) or k < 0 or not 0.0 <= v < math.inf}
            if bad:
                raise ValueError(f"PhaseScheduler `milestones` need integer epochs >= 0 and betas >= 0; fix {bad}.")
            milestones = {0: 1.0, **milestones}
        elif milestones is not None:
            raise ValueError(f"PhaseScheduler `milestones` only apply to schedule='milestones' (got {schedule!r}).")
        if schedule == "code_piecewise" and total_steps is None:
            total_steps = CODE_MAX_EPOCHS
        self.schedule = schedule
        self.gamma = gamma
        self.total_steps = total_steps
        self.value = value
        self.milestones = dict(sorted((milestones or {}).items()))
        self.epochs = list(self.milestones)
        self._resolved_total_steps = total_steps
        self.epoch = 0
        self.beta = 1.0

    def get_beta(self, epoch: int, total_steps: int | None = None) -> float:
        """Beta of RL step ``epoch``.

        Args:
            epoch: the RL step k (Lightning epoch).
            total_steps: K for ``"paper_exp"``; defaults to ``total_steps`` or the trainer's ``max_epochs``.

        Raises:
            ValueError: If ``"paper_exp"`` has no K.
        """
        if self.schedule == "constant":
            return self.value
        if self.schedule == "milestones":
            start = next(start for start in reversed(self.epochs) if epoch >= start)
            return self.milestones[start]
        steps = total_steps or self._resolved_total_steps
        if steps is None:
            raise ValueError("PhaseScheduler(schedule='paper_exp') needs K: set `total_steps` or `trainer.max_epochs`.")
        half = max(1, steps // 2)
        if self.schedule == "code_piecewise":
            if epoch <= half:
                return 1.0 - 0.2 * (1.0 - math.exp(-2.0 * epoch / half))
            return 0.8 * math.exp(-3.0 * (epoch - half) / max(1, steps - half))
        return 1.0 + math.exp(-self.gamma * epoch / half)

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        if not hasattr(pl_module, "beta"):
            raise AttributeError(
                f"PhaseScheduler needs {type(pl_module).__name__} to expose `beta` (float, the phase weight read by "
                "training_step); add it or remove the callback."
            )
        if self.schedule == "paper_exp" and self.total_steps is None:
            if trainer.max_epochs is None or trainer.max_epochs < 1:
                raise ValueError(
                    "PhaseScheduler(schedule='paper_exp') needs K: set `total_steps` or `trainer.max_epochs`."
                )
            self._resolved_total_steps = trainer.max_epochs
        self._check_assumption_a4(pl_module)

    def _check_assumption_a4(self, pl_module: "pl.LightningModule") -> None:
        """Warn when alpha * beta_max >= 1 (Assumption A.4) for a beta above 2, which the loss's own check assumes."""
        loss = getattr(pl_module, "loss_config", None)
        peaks = {"constant": self.value, "milestones": max(self.milestones.values(), default=1.0)}
        beta_max = peaks.get(self.schedule, 2.0)  # paper_exp starts at 2; code_piecewise never exceeds 1
        if loss is not None and loss.smoothing == "hinge" and beta_max > 2.0 and loss.alpha * beta_max >= 1.0:
            rank_zero_warn(
                f"PhaseScheduler's beta reaches {beta_max:g} with model.loss.alpha {loss.alpha:g}: alpha * beta_max "
                f"= {loss.alpha * beta_max:g} violates Assumption A.4 (< 1), so above the corridor the hinge cancels "
                "or reverses the entropy bonus. Lower the schedule's beta or alpha."
            )

    @override
    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._apply(pl_module, self.epoch)

    @override
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # The step training starts at, whether a checkpoint restored this callback before on_fit_start (DDP), after
        # it (strategies that restore after setup: ModelParallelStrategy/FSDP2), or not at all.
        self._apply(pl_module, trainer.current_epoch)

    @override
    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._apply(pl_module, trainer.current_epoch + 1)

    def _apply(self, pl_module: "pl.LightningModule", epoch: int) -> None:
        self.epoch = epoch
        self.beta = self.get_beta(epoch)
        pl_module.beta = self.beta

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(schedule=self.schedule)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"total_steps": self._resolved_total_steps, "epoch": self.epoch, "beta": self.beta}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch = state_dict.get("epoch", 0)
        self.beta = state_dict.get("beta", self.beta)
        saved = state_dict.get("total_steps")
        resolved = self._resolved_total_steps  # None outside fit (epo validate|test), where beta is not used
        if self.schedule == "paper_exp" and None not in (saved, resolved) and saved != resolved:
            rank_zero_warn(
                f"PhaseScheduler: the checkpoint's run had K={saved} but this run has K={resolved}, "
                f"so beta follows the new schedule; set `total_steps={saved}` to keep the old one."
            )
