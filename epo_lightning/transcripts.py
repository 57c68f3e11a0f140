"""Episode transcripts to every logger of the run: TensorBoard text, a W&B table, or a Markdown file for the others.

``RolloutDataModule`` renders the first ``num_transcripts`` episodes of every collection (training and each evaluation
split); ``EPOModule`` hands them here once per RL step, on the global-zero rank. A logger that cannot take text
(``CSVLogger``, ``MLFlowLogger``, a user's own) gets ``<log_dir>/transcripts/<tag>_step<k>.md`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger


def log_transcripts(trainer: Any, texts: Sequence[str], tag: str, step: int) -> list[Path]:
    """Log ``texts`` as ``transcripts/<tag>`` at RL step ``step``; returns the files written for text-less loggers."""
    if not texts or not trainer.is_global_zero:
        return []
    written = []
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            for i, text in enumerate(texts):
                logger.experiment.add_text(f"transcripts/{tag}_{i}", text, step)
        elif hasattr(logger, "log_text"):  # WandbLogger: one table per step
            logger.log_text(key=f"transcripts/{tag}", columns=["episode", "transcript"], data=list(enumerate(texts)))
        else:
            directory = Path(logger.log_dir or trainer.default_root_dir) / "transcripts"
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"{tag}_step{step:04d}.md"
            path.write_text("\n\n---\n\n".join(texts) + "\n")
            written.append(path)
    return written
