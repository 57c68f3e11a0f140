import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks import AdaptiveEntropyCoef, EntropyHistory, PhaseScheduler
from datamodules.rollout_datamodule import RolloutDataModule
from epo_lightning.module import EPOModule
from tests.conftest import EASY_DATA, TEST_PRESET, make_trainer

KEYS = (
    "loss/total",
    "loss/pg",
    "loss/smooth",
    "entropy/token_mean",
    "entropy/reference",
    "phase/beta",
    "rollout/success_rate",
    "rollout/valid_action_ratio",
    "rollout/turn_samples",
)


def _fit(root, cache_dir, max_epochs, ckpt_path=None, seed=0):
    seed_everything(seed)  # what `epo fit` does with seed_everything (a random seed unless pinned)
    module = EPOModule(
        tiny=TEST_PRESET,
        cache_dir=str(cache_dir),
        loss={"kl_coef": 0.01},
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
    )
    history = EntropyHistory()
    callbacks = [history, PhaseScheduler(total_steps=4), ModelCheckpoint(dirpath=root / "ckpt", save_last=True)]
    trainer = make_trainer(
        root, max_epochs=max_epochs, limit_val_batches=0, callbacks=callbacks, enable_checkpointing=True
    )
    trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA), ckpt_path=ckpt_path)
    return trainer, history


def test_resumed_fit_matches_the_uninterrupted_one(tmp_path, cache_dir, tiny_policy_dir):
    straight, straight_history = _fit(tmp_path / "straight", cache_dir, max_epochs=3)
    _fit(tmp_path / "split", cache_dir, max_epochs=2)
    resumed, resumed_history = _fit(  # under another seed: the datamodule resumes with the checkpoint's
        tmp_path / "split", cache_dir, max_epochs=3, ckpt_path=tmp_path / "split" / "ckpt" / "last.ckpt", seed=1
    )
    assert resumed.datamodule.rollout_step == straight.datamodule.rollout_step == 3
    assert resumed_history.history == straight_history.history
    for key in KEYS:
        assert torch.equal(resumed.callback_metrics[key], straight.callback_metrics[key]), key
    final = dict(straight.lightning_module.named_parameters())
    for name, value in resumed.lightning_module.named_parameters():  # the last update too, and the optimizer state
        assert torch.equal(value, final[name]), name


def test_an_explicit_data_seed_that_differs_from_the_checkpoint_s_is_kept_with_a_warning():
    data = RolloutDataModule(**EASY_DATA, seed=5)
    with pytest.warns(UserWarning, match="data.seed 5 differs from the checkpoint's 3"):
        data.load_state_dict({"rollout_step": 2, "seed": 3})
    assert (data.root_seed, data.rollout_step) == (5, 2)


class _InputIds(Callback):
    """The input ids of every micro-batch trained, and the size of its epoch's loader, by epoch."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, list[torch.Tensor]] = {}
        self.loader_sizes: dict[int, int] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.by_epoch.setdefault(trainer.current_epoch, []).append(batch.input_ids.clone())
        self.loader_sizes[trainer.current_epoch] = trainer.num_training_batches


def test_a_fit_resumed_inside_an_rl_step_plays_the_step_again_and_trains_on_no_rollout_twice(tmp_path, cache_dir):
    def fit(max_epochs, callbacks, ckpt_path=None):
        seed_everything(0)
        module = EPOModule(tiny=TEST_PRESET, cache_dir=str(cache_dir), optimizer=lambda p: torch.optim.AdamW(p))
        trainer = make_trainer(
            tmp_path, max_epochs=max_epochs, limit_val_batches=0, callbacks=callbacks, enable_checkpointing=True
        )
        data = RolloutDataModule(**{**EASY_DATA, "mini_batch_size": 16})  # an optimizer step per micro-batch
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return trainer

    every_update = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    fit(1, [every_update])
    trained = _InputIds()
    with pytest.warns(UserWarning, match="Resumed inside RL step 0, after 2 of its micro-batches"):
        resumed = fit(2, [trained], ckpt_path=tmp_path / "ckpt" / "epoch=0-step=2.ckpt")
    rest_of_step_0, step_1 = trained.by_epoch[0], trained.by_epoch[1]
    assert len(rest_of_step_0) == trained.loader_sizes[0] - 2 > 0  # Lightning skips the micro-batches done
    # before: step 1 handed back the rollout the rest of step 0 had trained on, so it was trained on twice
    for ids in rest_of_step_0:
        assert not any(ids.shape == other.shape and torch.equal(ids, other) for other in step_1)
    assert resumed.datamodule.rollout_step == 2  # step 0 played again, then step 1


class _Coefficients(Callback):
    """The entropy coefficient (lambda) each micro-batch trained with, by epoch."""

    def __init__(self) -> None:
        self.by_epoch: dict[int, set[float]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.by_epoch.setdefault(trainer.current_epoch, set()).add(float(pl_module.entropy_coef))


def test_a_fit_resumed_inside_an_rl_step_trains_with_its_lambda_and_logs_the_step(tmp_path, cache_dir):
    def fit(callbacks, ckpt_path=None):
        seed_everything(0)
        module = EPOModule(tiny=TEST_PRESET, cache_dir=str(cache_dir), optimizer=lambda p: torch.optim.AdamW(p))
        trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=0, enable_checkpointing=True)
        trainer.callbacks[:0] = [AdaptiveEntropyCoef(lr=1.0, initial_coef=1e-2), *callbacks]
        data = RolloutDataModule(**{**EASY_DATA, "mini_batch_size": 16})  # an optimizer step per micro-batch
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return trainer

    straight = _Coefficients()
    fit([straight, ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)])
    (lambda_1,) = straight.by_epoch[1]
    assert lambda_1 != 1e-2  # the callback moved lambda for step 1
    inside_step_1 = min((tmp_path / "ckpt").glob("epoch=1-*.ckpt"), key=lambda p: int(p.stem.split("step=")[1]))
    resumed = _Coefficients()
    with pytest.warns(UserWarning, match="Resumed inside RL step 1, after 1 of its micro-batches"):
        trainer = fit([resumed], ckpt_path=inside_step_1)
    assert resumed.by_epoch == {1: {lambda_1}}  # before: the config's lambda, as the module does not save it
    metrics = trainer.callback_metrics  # the resumed step is logged as a step: its rollout, its training time
    assert "rollout/success_rate" in metrics and 0 < float(metrics["time/train_s"]) < 600
