"""A fit whose environment steps are slow and never end an episode; run as a process by the tests, then SIGTERMed.

Prints ``step <rank>`` at every environment step, so the test knows when to send the signal and how many steps the
run took after it, and ``stopped <rank>`` when the fit has shut down on SIGTERM. Runs in one process, or on every
rank of ``torchrun`` (gloo, DDP). With a second argument ``short_rank1``, rank 1's episodes end at their first step,
so rank 1 has finished its rollout and waits for rank 0 when the signal comes. With ``slow_batches`` the environment
is fast and every training micro-batch slow instead: each rank prints ``pid <rank> <pid>`` at the start and
``batch <rank>`` at every micro-batch, so a test can signal one rank while the ranks train.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

from datamodules.envs.embedded.env import EmbeddedTextEnv
from datamodules.rollout_datamodule import RolloutDataModule
from epo_lightning.cli import exit_status
from epo_lightning.module import EPOModule
from tests.conftest import EASY_DATA, TEST_PRESET, make_trainer


class SlowSimulator(Callback):
    def __init__(self, short_rank1: bool) -> None:
        self.short_rank1 = short_rank1

    def on_fit_start(self, trainer, pl_module):
        step = EmbeddedTextEnv.step
        ends = self.short_rank1 and trainer.global_rank == 1

        def slow(env, action):
            print(f"step {trainer.global_rank}\n", end="", flush=True)  # one write: ranks share the pipe, unbuffered
            time.sleep(0.2)
            observation, _, _, truncated, info = step(env, action)
            return observation, 0.0, ends, truncated, info  # the episode goes on to max_turns, unless it ends

        EmbeddedTextEnv.step = slow


class SlowBatches(Callback):
    def on_fit_start(self, trainer, pl_module):
        print(f"pid {trainer.global_rank} {os.getpid()}\n", end="", flush=True)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        print(f"batch {trainer.global_rank}\n", end="", flush=True)
        time.sleep(0.3)


if __name__ == "__main__":
    root = Path(sys.argv[1])
    torch.set_num_threads(1)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    data = RolloutDataModule(**{**EASY_DATA, "tasks_per_step": 1, "group_size": 2, "max_turns": 20})
    slow = (
        SlowBatches()
        if sys.argv[2:] == ["slow_batches"]
        else SlowSimulator(short_rank1=sys.argv[2:] == ["short_rank1"])
    )
    trainer = make_trainer(root, devices=world_size, max_epochs=50, limit_val_batches=0, callbacks=[slow])
    try:
        with exit_status():
            trainer.fit(EPOModule(tiny=TEST_PRESET, cache_dir=str(root / "cache")), datamodule=data)
    except SystemExit as stop:  # exit_status's 143: shut down on SIGTERM by the run itself, not killed, not crashed
        print(f"stopped {trainer.global_rank}\n" if stop.code == 143 else f"exit {stop.code}\n", end="", flush=True)
        raise
