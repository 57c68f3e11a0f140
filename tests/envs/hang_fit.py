"""A fit whose environments hang in ``step`` from the first rollout on; run as a process by the tests, then SIGTERMed.

Prints ``hanging`` when the first step starts to hang, so the test knows when to send the signal.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lightning.pytorch import Callback

from datamodules.envs.embedded.env import EmbeddedTextEnv
from datamodules.rollout_datamodule import RolloutDataModule
from epo_lightning.cli import exit_status
from epo_lightning.module import EPOModule
from tests.conftest import EASY_DATA, TEST_PRESET, make_trainer


class HangingSimulator(Callback):
    def on_fit_start(self, trainer, pl_module):
        def hang(env, action):
            print("hanging", flush=True)
            time.sleep(600)

        EmbeddedTextEnv.step = hang


if __name__ == "__main__":
    root = Path(sys.argv[1])
    data = RolloutDataModule(**{**EASY_DATA, "tasks_per_step": 1, "group_size": 2, "env_timeout": 2.0})
    trainer = make_trainer(root, max_epochs=50, limit_val_batches=0, callbacks=[HangingSimulator()])
    with exit_status():
        trainer.fit(EPOModule(tiny=TEST_PRESET, cache_dir=str(root / "cache")), datamodule=data)
