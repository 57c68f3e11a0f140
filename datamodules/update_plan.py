"""How one RL step's turn rows become optimizer updates and micro-batches, identically on every rank.

The paper's Table 2 sets two sizes, as verl does: the **mini-batch** (turn rows per optimizer update, over all ranks;
it fixes the number of updates per RL step) and the **micro-batch** (rows per forward/backward on one rank; it only
bounds memory). Under DDP every rank must run the same number of micro-batches, whatever its episode lengths, or the
gradient all-reduces pair up wrongly and the job hangs. So the ranks exchange their row counts once and derive the
same plan from them:

    U = ceil(N / mini_batch_size)                       optimizer updates (N = rows of all ranks)
    m = max over ranks r of ceil(ceil(n_r / U) / micro_batch_size)   micro-batches per update on every rank

Each rank splits its own (shuffled) rows into U balanced mini-batches and each of those into m balanced micro-batches,
so every row is trained exactly once per RL step. Before the updates, the models that score the rows without a
gradient (pi_old when recomputed, the KL reference, the critic) run once per distinct row of the step (identical rows
are common: a group whose policy is sure of its move plays it in many episodes), in

    S = max over ranks r of ceil(d_r / micro_batch_size)   scoring micro-batches on every rank (d_r: r's distinct rows)

A rank with fewer rows than micro-batches (or distinct rows than scoring micro-batches) fills the gap with empty
micro-batches that carry no response token (``filler_row``): they join the collectives and add nothing to the update.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class UpdatePlan:
    """The shape of one RL step's training, the same on every rank.

    Attributes:
        num_updates: optimizer updates in the step (PPO mini-batches), U.
        micro_batches: micro-batches per update on every rank, m.
        scoring_batches: no-gradient scoring micro-batches of the step's distinct rows on every rank, S.
    """

    num_updates: int
    micro_batches: int
    scoring_batches: int


def plan_updates(
    rank_rows: Sequence[int],
    mini_batch_size: int,
    micro_batch_size: int,
    rank_distinct_rows: Sequence[int] | None = None,
) -> UpdatePlan:
    """The update plan for ranks holding ``rank_rows`` rows each (see the module docstring).

    Args:
        rank_rows: the number of turn rows of every rank, in rank order.
        mini_batch_size: rows per optimizer update, summed over ranks.
        micro_batch_size: rows per micro-batch on one rank.
        rank_distinct_rows: how many of each rank's rows are distinct (all of them when None).
    """
    if mini_batch_size < 1 or micro_batch_size < 1:
        raise ValueError(f"mini- and micro-batch sizes must be >= 1, got {mini_batch_size} and {micro_batch_size}.")
    num_updates = max(1, math.ceil(sum(rank_rows) / mini_batch_size))
    micro = max(math.ceil(math.ceil(n / num_updates) / micro_batch_size) for n in rank_rows)
    distinct = rank_rows if rank_distinct_rows is None else rank_distinct_rows
    scoring = max(math.ceil(d / micro_batch_size) for d in distinct)
    return UpdatePlan(num_updates=num_updates, micro_batches=max(1, micro), scoring_batches=max(1, scoring))


def split_balanced(items: Sequence[T], parts: int) -> list[list[T]]:
    """``parts`` consecutive chunks of ``items`` whose sizes differ by at most one (trailing chunks may be empty)."""
    base, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for part in range(parts):
        size = base + (part < extra)
        chunks.append(list(items[start : start + size]))
        start += size
    return chunks


def split_least_padding(items: Sequence[T], parts: int, length: Callable[[T], int]) -> list[list[T]]:
    """``items`` sorted by ``length`` and cut into ``parts`` consecutive chunks that pad the fewest positions.

    A chunk pads every row to its longest, so rows ``[a, b)`` of the sorted order cost ``(b - a) * length[b - 1]``
    positions. Among all cuts, this one minimizes the total, with no chunk costing more than the largest chunk of the
    row-balanced cut (``ceil(n / parts)`` rows of the longest length): short rows share larger chunks, and no
    micro-batch needs more memory than before. Dynamic programming over the chunk ends, ``parts`` passes over an
    ``(n + 1) x (n + 1)`` cost matrix. Fewer items than parts: the balanced cut, with empty trailing chunks.
    """
    ordered = sorted(items, key=length)
    n = len(ordered)
    if n <= parts:
        return split_balanced(ordered, parts)
    lengths = np.array([length(item) for item in ordered], dtype=np.float64)  # exact: counts far below 2**53
    budget = math.ceil(n / parts) * lengths[-1]
    ends = np.arange(n + 1)
    # cost[a, b]: positions of the chunk [a, b); infinite when empty, reversed or over the budget
    cost = (ends[None, :] - ends[:, None]) * np.concatenate(([0.0], lengths))[None, :]
    cost = np.where((ends[None, :] > ends[:, None]) & (cost <= budget), cost, np.inf)
    best = cost[0].copy()  # one chunk covering rows [0, b)
    starts = []
    for _ in range(parts - 1):
        total = best[:, None] + cost
        starts.append(total.argmin(axis=0))
        best = total.min(axis=0)
    cuts, end = [n], n
    for start in reversed(starts):
        end = int(start[end])
        cuts.append(end)
    bounds = [0, *reversed(cuts)]
    return [ordered[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
