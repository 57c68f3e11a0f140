"""``ExportPolicy``: write the trained policy as a Hugging Face directory when ``fit`` ends."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch import Callback
from typing_extensions import override

from epo_lightning.policy import save_policy
from epo_lightning.sharding import full_copy


class ExportPolicy(Callback):
    """At the end of ``fit``, save ``pl_module.model`` and ``pl_module.tokenizer`` with ``save_pretrained``'s layout.

    The directory loads with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``. Rank 0
    writes; under FSDP2 the full weights are first gathered to its CPU. ``epo export`` does the same from a checkpoint.

    Args:
        dirpath: where to write; by default ``<the run's log dir>/policy``.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.exported: Path | None = None

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = Path(self.dirpath) if self.dirpath else Path(trainer.log_dir or trainer.default_root_dir) / "policy"
        model = full_copy(pl_module.actor, trainer.global_rank)  # every rank takes part when sharded
        if trainer.is_global_zero:
            save_policy(model, pl_module.tokenizer, out)
        trainer.strategy.barrier("export_policy")
        self.exported = out
