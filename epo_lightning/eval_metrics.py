"""The evaluation metrics of the validation and test splits (success, episode length, valid actions, env errors).

Each evaluation batch holds finished episodes of one split (``val_iid`` or ``val_ood``); the metrics pool them over
the batches and ranks of the evaluation (docs/metrics.md).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchmetrics import MeanMetric, Metric, SumMetric

#: The validation loop's metric prefix per split, and the test loop's.
VAL_PREFIX = {"val_iid": "val", "val_ood": "val_ood"}
TEST_PREFIX = {"val_iid": "test", "val_ood": "test_ood"}


class EvalMetrics(nn.Module):
    """Per split: success rate, episode length and valid-action ratio, and the episodes environment errors cut short.

    ``success_rate``, ``episode_len`` (turns) and ``valid_action_ratio`` (valid turns over all turns) are over the
    episodes played to their end; ``env_errors`` counts the others, left out of those rates (a rate over fewer
    episodes than ``data.val_tasks`` says so here).
    """

    def __init__(self) -> None:
        super().__init__()
        self.success = nn.ModuleDict({split: MeanMetric() for split in VAL_PREFIX})
        self.episode_len = nn.ModuleDict({split: MeanMetric() for split in VAL_PREFIX})
        self.valid_actions = nn.ModuleDict({split: MeanMetric() for split in VAL_PREFIX})
        self.env_errors = nn.ModuleDict({split: SumMetric() for split in VAL_PREFIX})

    def update(self, batch: dict[str, Any], prefix_map: dict[str, str]) -> dict[str, Metric]:
        """Add a batch of episodes; returns the metrics to log, by name, for its split.

        Also for an empty batch (a rank with no task of the split, or whose episodes all failed): it adds nothing, but
        every rank must log the same metrics, whose values are then pooled over the ranks in one collective.
        """
        split = batch["split"]
        turns = batch["episode_len"]
        self.success[split].update(batch["success"])
        self.episode_len[split].update(turns)
        self.valid_actions[split].update(batch["valid_turns"] / turns.clamp_min(1.0), weight=turns)
        self.env_errors[split].update(batch["env_errors"])
        prefix = prefix_map[split]
        return {
            f"{prefix}/success_rate": self.success[split],
            f"{prefix}/episode_len": self.episode_len[split],
            f"{prefix}/valid_action_ratio": self.valid_actions[split],
            f"{prefix}/env_errors": self.env_errors[split],
        }

    def reset(self) -> None:
        """Start from fresh states (a validation run before fit leaves states created under inference mode)."""
        for metrics in (self.success, self.episode_len, self.valid_actions, self.env_errors):
            for metric in metrics.values():
                metric.reset()
