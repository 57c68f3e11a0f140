"""``AdaptiveEntropyCoef``: steer the entropy toward a target anchored at the initial entropy (docs/algorithm.md 6).

AER (arXiv 2510.10959) keeps the policy entropy near ``H_target = tau * H_0``, with ``H_0`` the initial policy's
entropy, by adjusting the entropy-bonus coefficient lambda; its exact update rule is not public. The rule here is the
one SAC uses for its temperature (Haarnoja et al. 2018, "automatic entropy adjustment"): a gradient step on
``log lambda`` in the direction that closes the entropy gap, with the gap measured relative to the target so one step
size works for a 0.2-nat tiny model and a 1.2-nat 7B model alike:

    log lambda_{k+1} = clip(log lambda_k + lr * (H_target - H_k) / H_target, log lambda_min, log lambda_max)

Multiplicative steps suit a coefficient whose useful range spans orders of magnitude (1e-4 barely moves entropy,
1e-2 makes it explode; Cui et al. 2025), and the clip keeps it inside that range. ``H_k`` is the entropy of step k's
rollouts under the policy that sampled them (measured while they are scored), so ``H_0`` is exactly the initial
policy's and lambda_k is set before step k trains.
"""

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch import Callback
from torchmetrics import Metric
from typing_extensions import override


class AdaptiveEntropyCoef(Callback):
    """Set ``pl_module.entropy_coef`` (lambda) every RL step so the entropy tracks ``tau * H_0``.

    The LightningModule must expose ``entropy_coef: float`` (read by ``training_step``) and ``rollout_entropy``, a
    ``torchmetrics.MeanMetric`` of the token entropy of the step's rollouts, filled before ``on_train_epoch_start``
    (``EPOModule`` has both).

    Args:
        target_ratio: tau, the target as a fraction of the initial entropy (AER reports ~0.4 as its best).
        lr: step size on ``log lambda`` per RL step, for a relative entropy gap of 1.
        initial_coef: lambda_0; None starts from the module's ``entropy_coef``.
        min_coef: lower bound on lambda.
        max_coef: upper bound on lambda.

    Raises:
        ValueError: If an argument is out of range; the message names the argument to change.
    """

    #: The module attributes this callback sets; two callbacks that set the same one are refused at fit start.
    controls: tuple[str, ...] = ("entropy_coef",)

    def __init__(
        self,
        target_ratio: float = 0.4,
        lr: float = 0.1,
        initial_coef: float | None = None,
        min_coef: float = 1e-5,
        max_coef: float = 1e-1,
    ) -> None:
        if target_ratio <= 0:
            raise ValueError(f"AdaptiveEntropyCoef `target_ratio` must be > 0, got {target_ratio}.")
        if lr <= 0:
            raise ValueError(f"AdaptiveEntropyCoef `lr` must be > 0, got {lr}.")
        if not 0 < min_coef <= max_coef:
            raise ValueError(f"AdaptiveEntropyCoef needs 0 < min_coef <= max_coef, got {min_coef} and {max_coef}.")
        if initial_coef is not None and not min_coef <= initial_coef <= max_coef:
            raise ValueError(
                f"AdaptiveEntropyCoef `initial_coef`={initial_coef} must lie in [min_coef, max_coef] = "
                f"[{min_coef}, {max_coef}]."
            )
        self.target_ratio = target_ratio
        self.lr = lr
        self.initial_coef = initial_coef
        self.min_coef = min_coef
        self.max_coef = max_coef
        self.coef: float | None = initial_coef
        self.initial_entropy: float | None = None

    @property
    def target(self) -> float | None:
        """H_target = tau * H_0, once H_0 is measured."""
        return None if self.initial_entropy is None else self.target_ratio * self.initial_entropy

    def update(self, entropy: float) -> float:
        """Take step k's entropy H_k, return lambda_k (the first call records H_0 and returns lambda_0).

        Raises:
            ValueError: If ``entropy`` is not finite or no coefficient was set.
        """
        if not math.isfinite(entropy):
            raise ValueError(f"AdaptiveEntropyCoef got a non-finite entropy {entropy}: training diverged.")
        if self.coef is None:
            raise ValueError("AdaptiveEntropyCoef has no coefficient yet: set `initial_coef` or run it in a fit.")
        if self.initial_entropy is None:
            self.initial_entropy = entropy
            return self.coef
        gap = (self.target - entropy) / max(self.target, 1e-8)
        log_coef = math.log(self.coef) + self.lr * gap
        self.coef = min(max(math.exp(log_coef), self.min_coef), self.max_coef)
        return self.coef

    @override
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        metric = getattr(pl_module, "rollout_entropy", None)
        if not hasattr(pl_module, "entropy_coef") or not isinstance(metric, Metric):
            raise AttributeError(
                f"AdaptiveEntropyCoef needs {type(pl_module).__name__} to expose `entropy_coef` (float, read by "
                "training_step) and `rollout_entropy` (a torchmetrics.MeanMetric of the rollout token entropy); add "
                "them or remove the callback."
            )
        if self.coef is None:
            self.coef = min(max(float(pl_module.entropy_coef), self.min_coef), self.max_coef)

    @override
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # the module does not keep lambda in its checkpoint, and a fit resumed inside an RL step skips that step's
        # on_train_epoch_start: lambda_k is this callback's (restored) coefficient
        pl_module.entropy_coef = self.coef

    @override
    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # compute() all-reduces: every rank calls it, or none (trains_this_step is the same on every rank)
        if pl_module.rollout_entropy.update_called and getattr(pl_module, "trains_this_step", True):
            pl_module.entropy_coef = self.update(float(pl_module.rollout_entropy.compute()))
        pl_module.log("entropy/target", self.target or 0.0, on_step=False, on_epoch=True, batch_size=1)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"coef": self.coef, "initial_entropy": self.initial_entropy}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.coef = state_dict.get("coef", self.coef)
        self.initial_entropy = state_dict.get("initial_entropy")
