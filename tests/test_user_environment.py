"""A researcher's own environment, defined outside the package, trained from a config file alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from datamodules.envs import get_suite
from datamodules.rollout_datamodule import RolloutDataModule

ROOT = Path(__file__).parents[1]
SCRIPT = "import sys; from epo_lightning.cli import main; sys.exit(main())"
GUESS_ENV = '''
import gymnasium as gym


class GuessEnv(gym.Env):
    """Find the box with the coin: one of three, opened one at a time."""

    def reset(self, *, seed=None, options=None):
        self.coin, self.turns = (seed or 0) % 3, 0
        return "three boxes stand in a row .", {"task": "find the coin", "admissible_actions": self._actions()}

    def _actions(self):
        return ["open box one", "open box two", "open box three"]

    def step(self, action):
        self.turns += 1
        won = action == self._actions()[self.coin]
        text = "the coin shines ." if won else "the box is empty ."
        info = {"task": "find the coin", "admissible_actions": self._actions(), "won": won}
        return text, float(won), won, self.turns >= 3, info
'''
CONFIG = """
trainer: {{accelerator: cpu, devices: 1, max_epochs: 2, logger: false, enable_checkpointing: false,
          reload_dataloaders_every_n_epochs: 1, num_sanity_val_steps: 0, enable_progress_bar: false}}
model:
  class_path: epo_lightning.module.EPOModule
  init_args:
    cache_dir: {cache}
    tiny: {{hidden_size: 32, intermediate_size: 64, num_layers: 1, num_heads: 2, prior_states: 200, prior_epochs: 2}}
data:
  class_path: datamodules.rollout_datamodule.RolloutDataModule
  init_args: {{env: guess_env.GuessEnv, tasks_per_step: 2, group_size: 2, max_turns: 3, val_tasks: 3}}
"""


def test_an_environment_in_the_working_directory_trains_from_a_config_file(tmp_path):
    (tmp_path / "guess_env.py").write_text(textwrap.dedent(GUESS_ENV))
    (tmp_path / "guess.yaml").write_text(CONFIG.format(cache=tmp_path / "cache"))
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}  # not the working directory
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, "fit", "--config", "guess.yaml"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "val/success_rate" in done.stdout  # played (and validated) on the user's environment
    (tokenizer,) = (tmp_path / "cache").glob("tiny-*/tokenizer.json")
    vocabulary = json.loads(tokenizer.read_text())["model"]["vocab"]
    assert {"boxes", "coin", "three"} <= set(vocabulary)  # learned from the environment's own play, listed nowhere


def test_environment_paths_that_do_not_import_or_break_the_contract_fail_at_setup(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "broken_env.py").write_text(
        "class NoInfo:\n"
        "    def reset(self, *, seed=None, options=None):\n"
        "        return 'a room'\n"
        "    def close(self):\n"
        "        pass\n"
    )
    with pytest.raises(ValueError, match=r"data.env='missing_pkg.Env' does not import \(ModuleNotFoundError"):
        get_suite("missing_pkg.Env")
    with pytest.raises(ValueError, match=r"does not import \(AttributeError"):
        get_suite("broken_env.Missing")
    data = RolloutDataModule(env="broken_env.NoInfo")
    with pytest.raises(
        ValueError, match=r"broken_env.NoInfo' breaks the environment contract: reset returned 'a room'"
    ):
        data.setup("fit")


def test_a_broken_environment_is_one_line_and_exit_status_two(tmp_path):
    (tmp_path / "broken_env.py").write_text(
        "class NoInfo:\n    def reset(self, *, seed=None, options=None):\n        return 'a room'\n"
        "    def close(self):\n        pass\n"
    )
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    for value, message in (
        ("nowhere.Env", "data.env='nowhere.Env' does not import"),  # refused while the classes are built
        ("broken_env.NoInfo", "breaks the environment contract"),  # refused at setup
    ):
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
             f"--data.init_args.env={value}", f"--model.init_args.cache_dir={tmp_path / 'cache'}",
             f"--trainer.default_root_dir={tmp_path}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr[-2000:]
        assert message in done.stderr.strip().splitlines()[-1] and "Traceback" not in done.stderr


def test_the_objective_math_and_the_environments_import_without_lightning():
    code = (
        "import sys, epo_lightning.losses, epo_lightning.advantages, datamodules.envs.embedded; "
        "print(sorted(m for m in ('lightning', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]
