"""The two-rank DDP run that the DDP and FSDP tests share (it also builds the tiny policy they load)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.distributed.launch import torchrun


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory) -> tuple[list[dict], Path]:
    """Three RL steps on two ranks that build the tiny preset into one fresh cache at the same time.

    With TensorBoard and ``EntropyPlots`` (when matplotlib is installed), so what only the global-zero rank draws
    (histograms, transcripts, figures) runs under two ranks too.
    """
    root = tmp_path_factory.mktemp("ddp")
    monitoring = ["--monitoring"] if importlib.util.find_spec("matplotlib") else []
    return torchrun(root / "out", root / "cache", "--steps", "3", *monitoring), root / "cache"
