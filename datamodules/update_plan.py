"""How one RL step's turn rows become optimizer updates and micro-batches, identically on every rank.

The paper's Table 2 sets two sizes, as verl does: the **mini-batch** (turn rows per optimizer update, over all ranks;
it fixes the number of updates per RL step) and the **micro-batch** (rows per forward/backward on one rank; it only
bounds memory). Under DDP every rank must run the same number of micro-batches, whatever its episode lengths, or the
gradient all-reduces pair up wrongly and the job hangs. So the ranks exchange their row counts once and derive the
same plan from them:

    U = ceil(N / mini_batch_size)                       optimizer updates (N = rows of all ranks)
    m = max over ranks r of ceil(ceil(n_r / U) / micro_batch_size)   micro-batches per update on every rank

Each rank splits its own (shuffled) rows into U balanced mini-batches and each of those into m balanced micro-batches,
so every row is trained exactly once per RL step. A rank with fewer rows than micro-batches fills the gap with empty
micro-batches that carry no response token (``filler_row``): they join the collectives and add nothing to the update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class UpdatePlan:
    """The shape of one RL step's training, the same on every rank.

    Attributes:
        num_updates: optimizer updates in the step (PPO mini-batches), U.
        micro_batches: micro-batches per update on every rank, m.
    """

    num_updates: int
    micro_batches: int


def plan_updates(rank_rows: Sequence[int], mini_batch_size: int, micro_batch_size: int) -> UpdatePlan:
    """The update plan for ranks holding ``rank_rows`` rows each (see the module docstring).

    Args:
        rank_rows: the number of turn rows of every rank, in rank order.
        mini_batch_size: rows per optimizer update, summed over ranks.
        micro_batch_size: rows per micro-batch on one rank.
    """
    if mini_batch_size < 1 or micro_batch_size < 1:
        raise ValueError(f"mini- and micro-batch sizes must be >= 1, got {mini_batch_size} and {micro_batch_size}.")
    num_updates = max(1, math.ceil(sum(rank_rows) / mini_batch_size))
    micro = max(math.ceil(math.ceil(n / num_updates) / micro_batch_size) for n in rank_rows)
    return UpdatePlan(num_updates=num_updates, micro_batches=max(1, micro))


def split_balanced(items: Sequence[T], parts: int) -> list[list[T]]:
    """``parts`` consecutive chunks of ``items`` whose sizes differ by at most one (trailing chunks may be empty)."""
    base, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for part in range(parts):
        size = base + (part < extra)
        chunks.append(list(items[start : start + size]))
        start += size
    return chunks
