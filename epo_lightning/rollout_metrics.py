"""The ``rollout/*`` metrics of one RL step, pooled over every rank's episodes with torchmetrics.

Each rank reports the raw counts of its own collection (``ROLLOUT_COUNTS``); the metrics here turn them into values
for the whole run when Lightning computes them at epoch end (torchmetrics all-reduces their states):

- rates are ratios of sums over all ranks' episodes or turns (a rank with 3 episodes does not weigh like one with 30),
- counts (errors, restarts, rows) and throughput (tokens/s: the ranks generate in parallel) are summed,
- the rollout time is the slowest rank's, since every rank waits for it at the first collective.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn
from torchmetrics import MaxMetric, MeanMetric, Metric, SumMetric

#: What a rank reports of its collection: keys of the dict ``RolloutDataModule.rollout_stats``.
ROLLOUT_COUNTS = (
    "episodes",
    "successes",
    "return_sum",
    "truncated",
    "turns",
    "valid_turns",
    "response_tokens",
    "env_errors",
    "env_restarts",
    "rows",
    "generated_tokens",
    "seconds",
    "positions",
    "padded_positions",
    "distinct_rows",
)

#: rate metric -> (numerator count, denominator count)
_RATES = {
    "rollout/success_rate": ("successes", "episodes"),
    "rollout/return_mean": ("return_sum", "episodes"),
    "rollout/episode_len": ("turns", "episodes"),
    "rollout/truncated_frac": ("truncated", "episodes"),
    "rollout/valid_action_ratio": ("valid_turns", "turns"),
    "rollout/response_len": ("response_tokens", "turns"),
    "train/padding_frac": ("padded_positions", "positions"),
    "train/distinct_row_frac": ("distinct_rows", "rows"),
}
#: summed metric -> count
_SUMS = {"rollout/env_errors": "env_errors", "rollout/env_restarts": "env_restarts", "rollout/turn_samples": "rows"}


class RolloutMetrics(nn.Module):
    """One torchmetrics ``Metric`` per ``rollout/*`` name (and ``time/rollout_s``), updated once per RL step."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict()
        for name in _RATES:
            self.metrics[metric_key(name)] = MeanMetric(nan_strategy="ignore")
        for name in (*_SUMS, "rollout/tokens_per_s"):
            self.metrics[metric_key(name)] = SumMetric()
        self.metrics[metric_key("time/rollout_s")] = MaxMetric()

    def update(self, counts: Mapping[str, float]) -> None:
        """Add one rank's counts of one collection (keys ``ROLLOUT_COUNTS``)."""
        missing = set(ROLLOUT_COUNTS) - set(counts)
        if missing:
            raise KeyError(f"rollout statistics lack {sorted(missing)}; a collection reports all of {ROLLOUT_COUNTS}.")
        for name, (numerator, denominator) in _RATES.items():
            weight = float(counts[denominator])
            value = counts[numerator] / weight if weight > 0 else 0.0
            self.metrics[metric_key(name)].update(value, weight=weight)
        for name, count in _SUMS.items():
            self.metrics[metric_key(name)].update(float(counts[count]))
        throughput = counts["generated_tokens"] / max(counts["seconds"], 1e-9)
        self.metrics[metric_key("rollout/tokens_per_s")].update(throughput)
        self.metrics[metric_key("time/rollout_s")].update(float(counts["seconds"]))

    def items(self) -> list[tuple[str, Metric]]:
        """``(logged name, metric)`` pairs."""
        return [(key.replace(":", "/"), metric) for key, metric in self.metrics.items()]

    def reset(self) -> None:
        """Forget the previous RL step."""
        for metric in self.metrics.values():
            metric.reset()


def metric_key(name: str) -> str:
    """A module-dict key for a metric name (``nn.Module`` names may not contain dots; slashes read badly in paths)."""
    return name.replace("/", ":")
