"""GRPO group-normalized advantages (paper Section 3 GRPO advantage; epo-spec 1.1-1.2).

verl-agent convention (``compute_mean_std_cross_all_data = True``): the sample unit is one turn-row, every turn-row
of every trajectory in a group counts in the group's mean and std, and a row's advantage is broadcast to all of its
response tokens by the loss.
"""

from __future__ import annotations

import torch
from torch import Tensor


def grpo_advantages(scores: Tensor, group_index: Tensor, normalize_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-normalized advantage ``A = (s - mean_g) / (std_g + eps)`` (epo-spec 1.1-1.2, as verl's GRPO).

    ``std_g`` is the unbiased standard deviation (as ``torch.std`` and verl). A group of a single row has no
    baseline to compare against: its mean is the row's own score, so its advantage is 0 (verl instead sets its mean
    to 0 and std to 1, which gives such a row its raw score as advantage).

    Args:
        scores: ``[N]`` one score per turn-row (trajectory outcome reward minus the turn's invalid-action penalty).
        group_index: ``[N]`` long group id per row (any integers; rows started from the same task share it).
        normalize_std: divide by ``std_g + eps`` (GRPO); False only subtracts the group mean (Dr. GRPO style).
        eps: added to the std (1e-6 as in verl).

    Returns:
        ``[N]`` float advantages.
    """
    if scores.shape != group_index.shape or scores.dim() != 1:
        raise ValueError(
            f"scores and group_index must both be 1-D [N], got {tuple(scores.shape)} and {tuple(group_index.shape)}."
        )
    scores = scores.float() if not scores.is_floating_point() else scores
    ids, group = torch.unique(group_index, return_inverse=True)
    n_groups = ids.numel()
    counts = scores.new_zeros(n_groups).index_add(0, group, torch.ones_like(scores))
    mean = scores.new_zeros(n_groups).index_add(0, group, scores) / counts
    centered = scores - mean[group]
    if not normalize_std:
        return centered
    # (counts - 1) is clamped for single-row groups, whose centered score is 0 anyway: no 0 / 0.
    variance = scores.new_zeros(n_groups).index_add(0, group, centered.square()) / (counts - 1).clamp_min(1.0)
    return centered / (variance.sqrt()[group] + eps)
