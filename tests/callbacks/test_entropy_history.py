import math

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from torchmetrics import MeanMetric

from callbacks import EntropyHistory
from tests.conftest import make_trainer


class StandIn(BoringModel):
    """Honours the EntropyHistory contract; epoch e's two batches have entropies e + 0.5 and e + 1.5 (mean e + 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.entropy_reference: float | None = None
        self.train_entropy = MeanMetric()
        self.seen: list[tuple[int, float | None]] = []  # (epoch, reference) per training step
        self.rollouts: list[float | None] = []  # reference per train_dataloader call

    def train_dataloader(self):  # where EPO collects the rollouts of a step: before on_train_epoch_start
        self.rollouts.append(self.entropy_reference)
        return super().train_dataloader()

    def training_step(self, batch, batch_idx):
        self.train_entropy.update(torch.tensor(self.current_epoch + 0.5 + batch_idx))
        self.seen.append((self.current_epoch, self.entropy_reference))
        return super().training_step(batch, batch_idx)

    def on_train_epoch_start(self) -> None:
        self.train_entropy.reset()

    def references(self) -> list[float | None]:
        """The reference each epoch saw, checking that both of its steps saw the same one."""
        by_epoch = {}
        for epoch, reference in self.seen:
            assert by_epoch.setdefault(epoch, reference) == reference
        return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _fit(root, callback, max_epochs, ckpt_path=None, module=None, **trainer_kwargs):
    module = module or StandIn()
    settings = dict(
        max_epochs=max_epochs,
        limit_train_batches=2,
        limit_val_batches=0,
        enable_checkpointing=True,
        callbacks=[callback, ModelCheckpoint(dirpath=root, save_last=True)],
    )
    make_trainer(root, **{**settings, **trainer_kwargs}).fit(module, ckpt_path=ckpt_path)
    return module


@pytest.mark.parametrize(
    ("kwargs", "history", "expected"),
    [
        ({}, [], None),
        ({}, [1.0], 1.0),
        ({}, [1.0, 2.0, 4.0], 7 / 3),
        ({"mode": "window", "window": 2}, [1.0, 2.0, 4.0], 3.0),
        ({"mode": "window", "window": 5}, [1.0, 2.0], 1.5),
        ({"mode": "ema", "ema_decay": 0.5}, [1.0, 2.0, 4.0], 0.5 * (0.5 * 1 + 0.5 * 2) + 0.5 * 4),
        ({"mode": "ema", "ema_decay": 0.0}, [1.0, 2.0, 4.0], 4.0),
        ({"warmup_steps": 3}, [1.0, 2.0], None),
        ({"warmup_steps": 3}, [1.0, 2.0, 6.0], 3.0),
    ],
)
def test_reference_lookup(kwargs, history, expected):
    assert EntropyHistory(**kwargs).reference(history) == (None if expected is None else pytest.approx(expected))


def test_reference_defaults_to_the_own_history():
    callback = EntropyHistory()
    for value in (1.0, 2.0, 6.0):
        callback.append(value)
    assert callback.history == [1.0, 2.0, 6.0]
    assert callback.reference() == 3.0


@pytest.mark.parametrize(
    ("kwargs", "references"),
    [
        ({}, [None, 1.0, 1.5, 2.0]),  # H̄_k = k + 1: cumulative means of the past steps only
        ({"mode": "window", "window": 2}, [None, 1.0, 1.5, 2.5]),
        ({"mode": "ema", "ema_decay": 0.5}, [None, 1.0, 1.5, 2.25]),
        ({"warmup_steps": 2}, [None, None, 1.5, 2.0]),
    ],
)
def test_training_step_k_sees_the_reference_of_steps_before_k(tmp_path, kwargs, references):
    callback = EntropyHistory(**kwargs)
    module = _fit(tmp_path, callback, max_epochs=4)
    assert module.references() == module.rollouts == references
    assert callback.history == [1.0, 2.0, 3.0, 4.0]


def test_resumed_fit_sees_the_references_of_an_uninterrupted_one(tmp_path):
    straight = _fit(tmp_path / "straight", EntropyHistory(), max_epochs=4)
    _fit(tmp_path / "split", EntropyHistory(), max_epochs=2)
    callback = EntropyHistory()
    resumed = _fit(tmp_path / "split", callback, max_epochs=4, ckpt_path=tmp_path / "split" / "last.ckpt")
    assert resumed.references() == straight.references()[2:] == [1.5, 2.0]
    # Lightning loads the resumed run's first rollouts twice (the second at epoch 2's start): both see step 2's H_ref
    assert resumed.rollouts == [1.5, 1.5, 2.0]
    assert callback.history == [1.0, 2.0, 3.0, 4.0]


def test_resume_without_history_warns(tmp_path):
    _fit(tmp_path, EntropyHistory(), max_epochs=1)
    with pytest.warns(UserWarning, match="no history"):
        _fit(tmp_path, EntropyHistory(mode="window", window=3), max_epochs=2, ckpt_path=tmp_path / "last.ckpt")


def test_resume_from_a_validation_end_checkpoint_warns_about_the_lost_step(tmp_path):
    # check_val_every_n_epoch=2 makes ModelCheckpoint save at validation end, before on_train_epoch_end of step 1
    kwargs = {"limit_val_batches": 1, "check_val_every_n_epoch": 2, "num_sanity_val_steps": 0}
    _fit(tmp_path, EntropyHistory(), max_epochs=2, **kwargs)
    callback = EntropyHistory()
    with pytest.warns(UserWarning, match="no entropy was recorded in RL step 1"):
        _fit(tmp_path, callback, max_epochs=3, ckpt_path=tmp_path / "last.ckpt", **kwargs)
    assert callback.history == [1.0, 3.0]


def test_state_dict_round_trip_and_state_key():
    callback = EntropyHistory()
    callback.append(1.0)
    restored = EntropyHistory()
    restored.load_state_dict(callback.state_dict())
    assert restored.history == [1.0]
    EntropyHistory().load_state_dict({})  # an old checkpoint without the key
    assert EntropyHistory().state_key != EntropyHistory(mode="window", window=5).state_key
    assert EntropyHistory(mode="window", window=4).state_key != EntropyHistory(mode="window", window=5).state_key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "median"}, "`mode` must be"),
        ({"mode": "window"}, "needs `window` >= 1"),
        ({"mode": "window", "window": 0}, "needs `window` >= 1"),
        ({"window": 3}, "only applies to mode='window'"),
        ({"mode": "ema", "ema_decay": 1.0}, "`ema_decay` must be in"),
        ({"ema_decay": -0.1}, "`ema_decay` must be in"),
        ({"warmup_steps": 0}, "`warmup_steps` must be >= 1"),
    ],
)
def test_bad_arguments_say_what_to_change(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EntropyHistory(**kwargs)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_entropy_is_an_error(value):
    callback = EntropyHistory()
    with pytest.raises(ValueError, match="RL step 0 is"):
        callback.append(value)
    assert callback.history == []


def test_a_module_without_the_contract_is_rejected_at_setup(tmp_path):
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, callbacks=[EntropyHistory()])
    with pytest.raises(AttributeError, match="expose `entropy_reference`.*`train_entropy`"):
        trainer.fit(BoringModel())


# ---------------------------------------------------------------- the released code's per-turn history
def test_per_turn_reference_is_the_mean_per_turn_index_over_steps():
    callback = EntropyHistory(per_turn=True)
    callback.append(torch.tensor([1.0, 2.0, math.nan]))  # step 0 had no turn 2
    callback.append(torch.tensor([3.0, 4.0, 6.0]))
    reference = callback.reference()
    assert isinstance(reference, torch.Tensor)
    torch.testing.assert_close(reference, torch.tensor([2.0, 3.0, 6.0]))


def test_per_turn_reference_falls_back_to_the_overall_mean_for_unseen_turns():
    callback = EntropyHistory(per_turn=True)
    callback.append(torch.tensor([1.0, math.nan]))
    callback.append(torch.tensor([3.0, math.nan]))
    torch.testing.assert_close(callback.reference(), torch.tensor([2.0, 2.0]))


def test_per_turn_ema_skips_turns_a_step_did_not_reach():
    callback = EntropyHistory(mode="ema", ema_decay=0.5, per_turn=True)
    for value in ([1.0, math.nan], [3.0, 2.0], [math.nan, 4.0]):
        callback.append(torch.tensor(value))
    # turn 0: 1 -> 0.5 * 1 + 0.5 * 3 = 2, kept at 2; turn 1: starts at 2 -> 0.5 * 2 + 0.5 * 4 = 3
    torch.testing.assert_close(callback.reference(), torch.tensor([2.0, 3.0]))


def test_per_turn_history_survives_a_state_dict_round_trip():
    callback = EntropyHistory(per_turn=True, include_current=True)
    callback.append(torch.tensor([1.0, math.nan]))
    restored = EntropyHistory(per_turn=True, include_current=True)
    restored.load_state_dict(callback.state_dict())
    torch.testing.assert_close(restored.reference(), torch.tensor([1.0, 1.0]))
    assert restored.state_key != EntropyHistory().state_key


def test_include_current_records_the_rollout_metric_at_epoch_start(tmp_path):
    class RolloutStandIn(StandIn):
        """Epoch e's rollouts have entropy 10 * (e + 1), recorded before on_train_epoch_start as EPOModule does."""

        def __init__(self) -> None:
            super().__init__()
            self.rollout_entropy = MeanMetric()

        def train_dataloader(self):
            self.rollout_entropy.reset()
            self.rollout_entropy.update(torch.tensor(10.0 * (self.trainer.current_epoch + 1)))
            return super().train_dataloader()

    module = _fit(tmp_path, EntropyHistory(include_current=True), 3, module=RolloutStandIn())
    # step k trains with the mean of the rollout entropies of steps 0..k, its own included (the code's rule)
    assert module.references() == [10.0, 15.0, 20.0]
