"""``TurnEntropy``: mean token entropy per turn index, the per-turn history entry of the released code.

The released code records ``ent_mean[t]``, the token-mean entropy of turn ``t`` over the rollout batch, every RL step,
and references each row's tokens against the history mean at the row's own turn index. This metric accumulates the
entropy sum and token count per turn index (turns at or beyond ``num_turns - 1`` share the last slot) and all-reduces
them across DDP ranks in ``compute``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class TurnEntropy(Metric):
    """Token-mean entropy per turn index.

    Args:
        num_turns: number of turn-index slots; later turns share the last one.
    """

    full_state_update = False

    def __init__(self, num_turns: int) -> None:
        super().__init__()
        if num_turns < 1:
            raise ValueError(f"num_turns must be >= 1, got {num_turns}.")
        self.num_turns = num_turns
        self.add_state("entropy_sum", torch.zeros(num_turns, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.zeros(num_turns, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, entropy: Tensor, mask: Tensor, turn_index: Tensor) -> None:
        """Add a batch: ``entropy`` and ``mask`` ``[B, T]``, ``turn_index`` ``[B]``."""
        slots = turn_index.clamp(max=self.num_turns - 1).to(self.entropy_sum.device)
        mask = mask.to(entropy.dtype)
        self.entropy_sum.index_add_(0, slots, (entropy * mask).sum(dim=1).to(torch.float64))
        self.tokens.index_add_(0, slots, mask.sum(dim=1).to(torch.float64))

    def compute(self) -> Tensor:
        """``[num_turns]`` float32 mean entropy per turn index; NaN for indices no token was seen at."""
        return (self.entropy_sum / self.tokens).float()
