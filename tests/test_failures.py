"""Fail loudly, lose nothing: each failure an operator hit, reproduced first, and what the framework now does."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins.io import torch_io
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules.envs.embedded.env import EmbeddedTextEnv
from datamodules.rollout_datamodule import RolloutDataModule
from epo_lightning.cli import cli_main
from epo_lightning.module import EPOModule
from tests.conftest import EASY_DATA, TEST_PRESET, make_trainer


def _module(cache_dir, **kwargs):
    return EPOModule(tiny=TEST_PRESET, cache_dir=str(cache_dir), **kwargs)


def test_divergence_stops_before_any_checkpoint_with_non_finite_weights(cache_dir, tiny_policy_dir, tmp_path):
    module = _module(
        cache_dir,
        grad_clip=None,
        optimizer=lambda p: torch.optim.SGD(p, lr=1e-3),
        # RL step 0 trains and is saved; step 1's learning rate blows the weights up
        lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1.0 if step == 0 else 1e33),
        lr_interval="epoch",
    )
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
    trainer = make_trainer(
        tmp_path, max_epochs=3, limit_val_batches=0, enable_checkpointing=True, callbacks=[checkpoint]
    )
    with pytest.raises(FloatingPointError, match="learning rate"):
        trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA))
    written = sorted((tmp_path / "ckpt").glob("*.ckpt"))
    assert "last.ckpt" in [path.name for path in written]
    for path in written:  # step 0's, with finite weights; nothing of step 1 was written
        checkpoint = torch.load(path, weights_only=False, map_location="cpu")
        assert checkpoint["epoch"] == 0, path
        state = checkpoint["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


class FailSecondSave(Callback):
    """A disk that fills up: from RL step 1 on, checkpoint writes stop halfway with ENOSPC."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:

            def half_then_full(checkpoint, path):
                with open(path, "wb") as file:
                    file.write(b"\0" * 1000)
                raise OSError(28, "No space left on device")

            self.patch = pytest.MonkeyPatch()
            self.patch.setattr(torch_io, "_atomic_save", half_then_full)


def test_a_full_disk_keeps_the_previous_last_checkpoint_whole(cache_dir, tiny_policy_dir, tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
    failing = FailSecondSave()
    trainer = make_trainer(
        tmp_path, max_epochs=2, limit_val_batches=0, enable_checkpointing=True, callbacks=[checkpoint, failing]
    )
    try:
        with pytest.raises(OSError, match="No space left"):
            trainer.fit(_module(cache_dir), datamodule=RolloutDataModule(**EASY_DATA))
    finally:
        failing.patch.undo()
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    assert state["epoch"] == 0  # the good checkpoint of step 0, whole
    assert not list((tmp_path / "ckpt").glob("*.partial"))


class CrashingSimulator(Callback):
    """Every environment reset fails from the first rollout on (after the tiny policy was built from the env)."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def on_fit_start(self, trainer, pl_module):
        def broken_reset(env, *, seed=None, options=None):
            raise ConnectionError("simulator crashed")

        self.monkeypatch.setattr(EmbeddedTextEnv, "reset", broken_reset)


def test_rl_steps_without_usable_episodes_stop_the_run_with_the_cause(
    cache_dir, tiny_policy_dir, tmp_path, monkeypatch
):
    module = _module(cache_dir)
    trainer = make_trainer(tmp_path, max_epochs=5, limit_val_batches=0, callbacks=[CrashingSimulator(monkeypatch)])
    with pytest.raises(RuntimeError, match=r"2 RL steps in a row .* 16 environment errors.*max_empty_steps"):
        trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA, max_empty_steps=2))
    assert trainer.current_epoch == 1  # step 0 trained on nothing and logged its errors; step 1 stopped the run
    assert float(trainer.callback_metrics["rollout/env_errors"]) == 16


class FirstStepWithoutEpisodes(Callback):
    """Every environment reset fails in the first rollout only; records the policy's weights after each RL step."""

    def __init__(self, monkeypatch):
        self.monkeypatch, self.weights, self.logged = monkeypatch, [], []

    def on_fit_start(self, trainer, pl_module):
        def broken_reset(env, *, seed=None, options=None):
            raise ConnectionError("simulator crashed")

        self.monkeypatch.setattr(EmbeddedTextEnv, "reset", broken_reset)
        self.weights.append([p.detach().clone() for p in pl_module.model.parameters()])

    def on_train_epoch_start(self, trainer, pl_module):
        self.monkeypatch.undo()  # the first rollout is over: the simulator works again
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})  # the previous step's

    def on_train_epoch_end(self, trainer, pl_module):
        self.weights.append([p.detach().clone() for p in pl_module.model.parameters()])


def test_one_rl_step_without_usable_episodes_changes_nothing_and_the_run_goes_on(
    cache_dir, tiny_policy_dir, tmp_path, monkeypatch
):
    from callbacks import EntropyHistory, PhaseScheduler

    module = _module(cache_dir, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.1))
    recorder, history = FirstStepWithoutEpisodes(monkeypatch), EntropyHistory()
    callbacks = [recorder, history, PhaseScheduler(total_steps=3)]
    trainer = make_trainer(tmp_path, max_epochs=3, limit_val_batches=0, callbacks=callbacks)
    with pytest.warns(UserWarning, match="RL step 0 had no usable episode on any rank"):
        trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA))  # before: "training diverged" at step 0
    before, after_step_0, after_step_1 = recorder.weights[:3]
    assert all(torch.equal(a, b) for a, b in zip(before, after_step_0, strict=True))  # no AdamW decay on nothing
    assert not all(torch.equal(a, b) for a, b in zip(after_step_0, after_step_1, strict=True))
    assert len(history.history) == 2 and trainer.current_epoch == 3  # steps 1 and 2 recorded
    step_0 = recorder.logged[
        1
    ]  # no NaN for what had no token: nothing trained, no entropy (EarlyStopping stops on NaN)
    assert step_0["rollout/turn_samples"] == 0 and not any(math.isnan(v) for v in step_0.values())
    assert not {"ppo/clip_frac", "entropy/token_mean", "grad_norm/policy"} & set(step_0)
    trainer.save_checkpoint(tmp_path / "after_3.ckpt")
    again = EntropyHistory()
    resumed = make_trainer(tmp_path, max_epochs=4, limit_val_batches=0, callbacks=[again])
    with warnings.catch_warnings():  # the skipped step is in the checkpoint: no "H_ref restarts" warning
        warnings.filterwarnings("error", message=".*H_ref restarts")
        resumed.fit(_module(cache_dir), datamodule=RolloutDataModule(**EASY_DATA), ckpt_path=tmp_path / "after_3.ckpt")
    assert again.history[:2] == history.history and len(again.history) == 3 and again.skipped_steps == 1


def test_evaluation_counts_the_episodes_environment_errors_cut_short(cache_dir, tiny_policy_dir, tmp_path, monkeypatch):
    reset = EmbeddedTextEnv.reset

    def failing(env, *, seed=None, options=None):
        if options["split"] == "val_iid" and seed in (1, 3):
            raise ConnectionError("simulator crashed")
        return reset(env, seed=seed, options=options)

    monkeypatch.setattr(EmbeddedTextEnv, "reset", failing)
    (metrics,) = make_trainer(tmp_path).validate(_module(cache_dir), datamodule=RolloutDataModule(**EASY_DATA))
    assert (metrics["val/env_errors"], metrics["val_ood/env_errors"]) == (2.0, 0.0)  # of 8 tasks per split
    assert 0.0 <= metrics["val/success_rate"] <= 1.0  # over the 6 episodes played to their end


def test_group_size_one_with_a_group_baseline_is_refused_at_setup(cache_dir, tiny_policy_dir, tmp_path):
    data = RolloutDataModule(**{**EASY_DATA, "group_size": 1})
    with pytest.raises(ValueError, match="data.group_size is 1.*advantage: gae"):
        make_trainer(tmp_path).fit(_module(cache_dir, advantage="rloo"), datamodule=data)


def test_policy_load_errors_name_the_setting(tmp_path):
    module = EPOModule(policy=str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="model.policy=.*does not exist"):
        module.configure_model()
    with pytest.raises(OSError, match="model.policy='nobody/no-such-model'"):
        EPOModule(policy="nobody/no-such-model").configure_model()


def test_a_policy_directory_under_home_is_found_as_written(tiny_policy_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(tiny_policy_dir, tmp_path / "policies" / "mine")
    module = EPOModule(policy="~/policies/mine")  # as a YAML file gives it: no shell to expand it
    module.configure_model()  # before: refused as a directory that does not exist
    assert module.model is not None and module._policy_source == str(tmp_path / "policies" / "mine")


def test_ckpt_path_last_with_nothing_to_resume_is_an_error(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["epo"])
    with pytest.raises(FileNotFoundError, match="no last.ckpt"):
        cli_main(
            ["fit", "--config", "configs/quickstart.yaml", "--config", "configs/debug.yaml",
             f"--trainer.default_root_dir={tmp_path}", f"--model.init_args.cache_dir={cache_dir}", "--ckpt_path=last"]
        )  # fmt: skip


def test_defaults_follow_the_paper_and_the_reference_overlay_the_code(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["epo"])
    module = EPOModule()
    assert module.loss_config.agg == "turn_traj_mean" and module.hparams.grpo_statistics == "trajectory"
    code = cli_main(["--config", "configs/quickstart.yaml", "--config", "configs/epo_reference_code.yaml"], run=False)
    assert code.model.loss_config.agg == "token_mean" and code.model.hparams.grpo_statistics == "row"


def test_test_tasks_are_held_out_from_validation_and_untrained_evaluation_is_announced(
    cache_dir, tmp_path, monkeypatch
):
    played = []
    original = RolloutDataModule._play

    def recording(self, policy, tasks, torch_seed, evaluation):
        played.append({t.task_id for t in tasks})
        return original(self, policy, tasks, torch_seed, evaluation)

    monkeypatch.setattr(RolloutDataModule, "_play", recording)
    monkeypatch.setattr(sys, "argv", ["epo"])
    common = ["--config", "configs/quickstart.yaml", "--config", "configs/debug.yaml"]
    common += [f"--trainer.default_root_dir={tmp_path}", f"--model.init_args.cache_dir={cache_dir}"]
    with pytest.warns(UserWarning, match="evaluates the untrained policy"):
        cli_main(["validate", *common])
    validation = set().union(*played)
    played.clear()
    cli_main(["test", *common])
    assert validation and set().union(*played) and not validation & set().union(*played)


def _start_fit(script: str, root: Path, tiny_policy_dir: Path) -> subprocess.Popen:
    """Run ``script`` (a fit in ``tests/envs``) as its own process on the test preset, already built, under ``root``."""
    shutil.copytree(tiny_policy_dir, root / "cache" / tiny_policy_dir.name)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.Popen([sys.executable, script, str(root)], stdout=subprocess.PIPE, text=True, env=env)


def test_a_run_hung_in_an_in_process_environment_stops_on_sigterm(tmp_path, tiny_policy_dir, cache_dir):
    process = _start_fit("tests/envs/hang_fit.py", tmp_path, tiny_policy_dir)
    try:
        assert process.stdout.readline().strip() == "hanging"
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=60)  # before the fix: never (the environment sleeps 600 s)
    finally:
        process.kill()
    assert status == 128 + signal.SIGTERM  # stopped, and not reported as a finished run


def test_sigterm_ends_a_rollout_at_the_next_turn_instead_of_the_next_batch(tmp_path, tiny_policy_dir):
    process = _start_fit("tests/envs/slow_fit.py", tmp_path, tiny_policy_dir)
    try:
        assert process.stdout.readline().split() == ["step", "0"]  # turn 0 of the first rollout, 2 environments
        process.send_signal(signal.SIGTERM)
        after = process.stdout.read().split("\n")
        status = process.wait(timeout=60)
    finally:
        process.kill()
    assert status == 128 + signal.SIGTERM
    # the turn in progress ends (its other environment's step); before: all 20 turns (40 steps), then the first batch
    assert after.count("step 0") <= 1
    assert "stopped 0" in after


def test_two_callbacks_that_set_the_same_module_attribute_are_refused(cache_dir, tiny_policy_dir, tmp_path):
    from callbacks import PhaseScheduler

    class MyBeta(Callback):
        controls = ("beta",)

    trainer = make_trainer(tmp_path, callbacks=[PhaseScheduler(total_steps=2), MyBeta()])
    with pytest.raises(ValueError, match="PhaseScheduler and MyBeta both set pl_module.beta"):
        trainer.fit(_module(cache_dir), datamodule=RolloutDataModule(**EASY_DATA))
