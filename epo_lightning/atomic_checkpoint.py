"""Checkpoint files written whole or not at all: a full disk or a killed job never leaves a truncated ``last.ckpt``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes ``<path>.partial`` and renames it over ``path`` once it is complete.

    The rename is atomic on one file system, so readers see the previous checkpoint or the new one, never a part. A
    failed write removes its partial file and re-raises, and the previous checkpoint stays where it was.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        target = Path(path)
        partial = target.with_name(target.name + ".partial")
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
            os.replace(partial, target)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
