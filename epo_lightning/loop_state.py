"""Where in Lightning's fit loop a fit resumed: an RL step is one epoch of it."""

from __future__ import annotations

import lightning.pytorch as pl


def resumed_inside_a_step(trainer: pl.Trainer) -> bool:
    """The fit resumed from a checkpoint saved between two micro-batches of an RL step (an epoch).

    ``ModelCheckpoint(every_n_train_steps=...)``, ``train_time_interval``, ``OnExceptionCheckpoint`` and a cluster's
    requeue checkpoint save there; the default, at the end of an RL step, does not. Lightning then trains the step's
    remaining micro-batches without calling ``on_train_epoch_start`` for it. True only until the loop has advanced.
    """
    loop = trainer.fit_loop
    progress = loop.epoch_loop.batch_progress
    return loop.restarting and progress.current.ready > 0 and not progress.is_last_batch
