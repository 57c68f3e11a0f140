"""The two-rank DDP run that the DDP and FSDP tests share (it also builds the tiny policy they load)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed.launch import torchrun


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory) -> tuple[list[dict], Path]:
    """Three RL steps on two ranks that build the tiny preset into one fresh cache at the same time."""
    root = tmp_path_factory.mktemp("ddp")
    return torchrun(root / "out", root / "cache", "--steps", "3"), root / "cache"
