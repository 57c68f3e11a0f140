"""Per-token loss weights of one optimizer update, over all its micro-batches on all ranks (paper Eq. 2).

An optimizer update spans several micro-batches (memory) and several ranks (DDP). Aggregating each micro-batch on its
own and averaging the results is not the paper's objective: a nested mean of per-micro-batch nested means over-weights
the micro-batches that hold few trajectories. So the weights are computed once per update, over every row of the update
on every rank, and each micro-batch's loss is the weighted **sum** ``sum_{b,t} w[b,t] * value[b,t]``. Summed over the
update's micro-batches and ranks, that is exactly

- ``token_mean``:      ``w = 1 / (response tokens of the update)``
- ``turn_traj_mean``:  ``w = 1 / tokens(row) * 1 / turns(trajectory in the update) * 1 / trajectories(update)``

i.e. Eq. 2's mean over tokens, then turns, then trajectories. A trajectory lives on one rank (its episode was played
there), so turns are counted locally; the token and trajectory totals of each update are summed over ranks with one
``all_reduce``. Rows without response tokens (padding rows) are not turns and get weight 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from epo_lightning.losses import AggMode
from epo_lightning.types import TurnBatch


def update_token_weights(
    updates: Sequence[Sequence[TurnBatch]],
    agg: AggMode,
    all_reduce_sum: Callable[[Tensor], Tensor] = lambda totals: totals,
) -> list[list[Tensor]]:
    """``[B, T]`` weights for every micro-batch of every update (see the module docstring).

    Args:
        updates: the RL step's updates, each a list of micro-batches (``response_mask`` and ``traj_index`` are read).
        agg: ``token_mean`` or ``turn_traj_mean``.
        all_reduce_sum: sums a tensor over ranks (identity in one process).

    Returns:
        One float32 weight tensor per micro-batch, in the layout of ``updates``; 0 off the response mask.
    """
    if agg not in ("token_mean", "turn_traj_mean"):
        raise ValueError(f"aggregation mode must be 'token_mean' or 'turn_traj_mean', got {agg!r}.")
    local = []  # per update: (mask, row tokens, turns of the row's trajectory) per micro-batch, and the local totals
    totals = torch.zeros(len(updates), 2, dtype=torch.float64)
    for u, micro_batches in enumerate(updates):
        masks = [batch.response_mask.float().cpu() for batch in micro_batches]
        row_tokens = [mask.sum(dim=1) for mask in masks]
        trajs = torch.cat([batch.traj_index.cpu() for batch in micro_batches])
        is_turn = torch.cat(row_tokens) > 0
        ids, slot = torch.unique(trajs, return_inverse=True)
        turns = torch.zeros(ids.numel()).index_add(0, slot, is_turn.float())
        row_turns = turns[slot].split([len(batch) for batch in micro_batches])
        local.append((masks, row_tokens, row_turns))
        totals[u, 0] = float(sum(tokens.sum() for tokens in row_tokens))
        totals[u, 1] = float((turns > 0).sum())
    totals = all_reduce_sum(totals).clamp_min(1.0)
    weights = []
    for u, (masks, row_tokens, row_turns) in enumerate(local):
        if agg == "token_mean":
            weights.append([(mask / totals[u, 0]).float() for mask in masks])
            continue
        per_row = [
            1.0 / (tokens.clamp_min(1.0) * turns.clamp_min(1.0) * totals[u, 1])
            for tokens, turns in zip(row_tokens, row_turns, strict=True)
        ]
        weights.append([(mask * row.unsqueeze(1)).float() for mask, row in zip(masks, per_row, strict=True)])
    return weights
