"""A SIGTERM handler without a collective, so ranks whose rollouts take different numbers of turns stop cleanly.

Lightning's handler (``_SignalConnector._sigterm_notifier_fn``) broadcasts rank 0's flag from inside the handler,
wherever the rank happens to be when the signal comes in. During a rollout the ranks are rarely at the same place: a
rank whose episodes have all ended already waits in the exchange at the end of the collection, and the other rank's
broadcast meets that exchange instead of a broadcast. Both ranks then hang until the launcher kills them (torchrun
after 30 s), without the run's own shutdown. Here the handler only sets ``trainer.received_sigterm``; the ranks agree
to stop where every rank passes: at the end of each collection (``RolloutDataModule._play``) and, during the update,
in Lightning's own broadcast of rank 0's flag before every training batch. Lightning also reads each rank's own flag
after every batch, so a signal that reaches one rank only, or the ranks on either side of that check, can still
stop one rank a batch before the others; the launcher (torchrun) then ends the job without the run's shutdown.
"""

from __future__ import annotations

import logging
from types import FrameType

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_prefixed_message

log = logging.getLogger(__name__)


def notify_sigterm_locally(trainer: pl.Trainer) -> None:
    """Make ``trainer``'s SIGTERM handler set the flag without a collective.

    Call it before the trainer registers its handlers (a ``setup`` hook runs before). As Lightning's own handler does,
    it passes the signal on to processes that Lightning launched itself (``trainer.strategy.launcher``).
    """
    connector = trainer._signal_connector

    def notify(signum: int, _: FrameType | None) -> None:
        log.info(rank_prefixed_message(f"Received SIGTERM: {signum}", trainer.local_rank))
        if not connector.received_sigterm and trainer.strategy.launcher is not None:
            trainer.strategy.launcher.kill(signum)
        connector.received_sigterm = True

    connector._sigterm_notifier_fn = notify  # read when the handlers are registered, at the start of fit / validate
