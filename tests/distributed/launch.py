"""Launching ``fit_worker.py`` (or any module) on two gloo ranks with ``torchrun``, as a user with two GPUs would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[2]
WORKER = Path(__file__).with_name("fit_worker.py")
ENV = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    """A TCP port nothing listens on, for the rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(
    out: Path, cache: Path, *args: str, timeout: float = 600, fails: bool = False, saying: str = ""
) -> list[dict]:
    """Run ``fit_worker.py`` on two gloo ranks and return each rank's record (none when it ``fails``, as expected,
    with ``saying`` in its error output)."""
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        str(WORKER), "--out", str(out), "--cache", str(cache), *args,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=timeout)
    if fails:
        assert done.returncode != 0 and saying in done.stderr, done.stderr[-4000:]
        return []
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
