"""A SIGTERM handler without a collective, and the points where every rank agrees to stop.

Lightning's handler (``_SignalConnector._sigterm_notifier_fn``) broadcasts rank 0's flag from inside the handler,
wherever the rank happens to be when the signal comes in. During a rollout the ranks are rarely at the same place: a
rank whose episodes have all ended already waits in the exchange at the end of the collection, and the other rank's
broadcast meets that exchange instead of a broadcast. Both ranks then hang until the launcher kills them (torchrun
after 30 s), without the run's own shutdown. Lightning also reads each rank's own ``trainer.received_sigterm`` after
every training batch, so a signal that reaches the ranks on either side of that check (or one rank only) stops one
rank a batch before the others, which then wait for it in a collective.

Here the handler only marks the signal as pending on its rank. The ranks agree where every rank passes: at the end of
each collection (``RolloutDataModule._play``) and before every training micro-batch (``agree_on_sigterm``, one
all-reduce); only then is ``trainer.received_sigterm`` set, on every rank alike, and Lightning stops them after the
same batch.
"""

from __future__ import annotations

import logging
from types import FrameType

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_prefixed_message

log = logging.getLogger(__name__)

#: the signal connector's attribute marking a SIGTERM this rank received but the ranks have not agreed on
_PENDING = "epo_sigterm_pending"


def notify_sigterm_locally(trainer: pl.Trainer) -> None:
    """Make ``trainer``'s SIGTERM handler set the flag without a collective.

    Call it before the trainer registers its handlers (a ``setup`` hook runs before). As Lightning's own handler does,
    it passes the signal on to processes that Lightning launched itself (``trainer.strategy.launcher``).
    """
    connector = trainer._signal_connector

    def notify(signum: int, _: FrameType | None) -> None:
        log.info(rank_prefixed_message(f"Received SIGTERM: {signum}", trainer.local_rank))
        if not sigterm_pending(trainer) and trainer.strategy.launcher is not None:
            trainer.strategy.launcher.kill(signum)
        setattr(connector, _PENDING, True)

    connector._sigterm_notifier_fn = notify  # read when the handlers are registered, at the start of fit / validate


def sigterm_pending(trainer: pl.Trainer) -> bool:
    """This rank got SIGTERM (the other ranks may not know yet)."""
    connector = trainer._signal_connector
    return bool(getattr(connector, _PENDING, False) or connector.received_sigterm)


def agree_on_sigterm(trainer: pl.Trainer) -> bool:
    """Whether any rank got SIGTERM, the same answer on every rank, which then sets ``trainer.received_sigterm``.

    A collective: call it where every rank passes, the same number of times.
    """
    stop = trainer.strategy.reduce_boolean_decision(sigterm_pending(trainer), all=False)
    if stop:
        trainer._signal_connector.received_sigterm = True
    return stop
