"""Histograms of one RL step's rows in TensorBoard: token entropy, advantages and response lengths.

Drawn from the global-zero rank's rows (the other ranks' are alike in distribution; gathering them would cost a
collective per step for a picture). ``EPOModule`` takes the samples when it assigns the step's advantages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from epo_lightning.types import TurnBatch


def draws_histograms(trainer: Any) -> bool:
    """This process will draw the histograms: the global-zero rank of a run with a TensorBoard logger."""
    if trainer is None or not trainer.is_global_zero:
        return False
    return any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers)


def step_samples(batches: Sequence[TurnBatch]) -> dict[str, Tensor]:
    """The values to draw, from a step's scored batches with advantages (rows without response tokens left out)."""
    entropy, advantages, lengths = [], [], []
    for batch in batches:
        mask = batch.response_mask.bool()
        rows = mask.any(dim=1)
        entropy.append(batch.old_entropy[mask])
        per_token = batch.advantages if batch.advantages.dim() == 2 else batch.advantages[:, None].expand_as(mask)
        advantages.append(per_token[mask])
        lengths.append(mask.sum(dim=1)[rows].float())
    return {
        "hist/token_entropy": torch.cat(entropy).detach().cpu(),
        "hist/advantage": torch.cat(advantages).detach().cpu(),
        "hist/response_length": torch.cat(lengths).cpu(),
    }


def log_histograms(trainer: Any, samples: dict[str, Tensor], step: int) -> None:
    """Add each non-empty sample to every TensorBoard logger of the run, on the global-zero rank."""
    if not draws_histograms(trainer):
        return
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            for name, values in samples.items():
                if values.numel():
                    logger.experiment.add_histogram(name, values, step)
