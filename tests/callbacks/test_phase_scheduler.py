import math
import warnings

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from callbacks import PhaseScheduler
from tests.conftest import make_trainer


class StandIn(BoringModel):
    """Honours the PhaseScheduler contract and records the beta each training step sees."""

    def __init__(self) -> None:
        super().__init__()
        self.beta = 1.0
        self.seen: list[tuple[int, float]] = []  # (epoch, beta) per training step
        self.rollouts: list[float] = []  # beta per train_dataloader call

    def train_dataloader(self):  # where EPO collects the rollouts of a step: before on_train_epoch_start
        self.rollouts.append(self.beta)
        return super().train_dataloader()

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, self.beta))
        return super().training_step(batch, batch_idx)

    def betas(self) -> list[float]:
        """The beta each epoch saw, checking that both of its steps saw the same one."""
        by_epoch = {}
        for epoch, beta in self.seen:
            assert by_epoch.setdefault(epoch, beta) == beta
        return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _fit(root, callback, max_epochs, ckpt_path=None):
    module = StandIn()
    trainer = make_trainer(
        root,
        max_epochs=max_epochs,
        limit_train_batches=2,
        limit_val_batches=0,
        enable_checkpointing=True,
        callbacks=[callback, ModelCheckpoint(dirpath=root, save_last=True)],
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    return module


def _eq5(k: int, total_steps: int, gamma: float = 3.0) -> float:
    return 1 + math.exp(-gamma * k / (total_steps // 2))


@pytest.mark.parametrize(
    ("epoch", "total_steps", "expected"),
    [
        (0, 150, 2.0),
        (37, 150, 1 + math.exp(-3 * 37 / 75)),
        (75, 150, 1 + math.exp(-3.0)),  # k_mid: 1.0498 in the paper's table
        (150, 150, 1 + math.exp(-6.0)),  # K: 1.0025
        (25, 100, 1 + math.exp(-1.5)),
        (0, 1, 2.0),
        (1, 1, 1 + math.exp(-3.0)),  # K = 1: k_mid is clamped to 1
        (2, 5, 1 + math.exp(-3.0)),  # k_mid = floor(5 / 2)
    ],
)
def test_paper_schedule_is_eq5(epoch, total_steps, expected):
    assert PhaseScheduler().get_beta(epoch, total_steps=total_steps) == pytest.approx(expected)


def test_paper_table_values():
    scheduler = PhaseScheduler(total_steps=150)
    assert [round(scheduler.get_beta(k), 4) for k in (0, 75, 150)] == [2.0, 1.0498, 1.0025]
    assert PhaseScheduler(gamma=1.0, total_steps=10).get_beta(5) == pytest.approx(1 + math.exp(-1.0))


def test_a_checkpoint_of_another_k_is_announced_when_training_but_not_when_evaluating():
    import warnings

    state = PhaseScheduler(total_steps=30).state_dict()
    with pytest.warns(UserWarning, match="had K=30 but this run has K=60"):
        PhaseScheduler(total_steps=60).load_state_dict(state)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*Assumption A.4")
        PhaseScheduler().load_state_dict(state)  # epo validate|test: K unresolved, beta unused
        PhaseScheduler(total_steps=30).load_state_dict(state)


def test_paper_schedule_without_k_says_what_to_set():
    with pytest.raises(ValueError, match="set `total_steps` or `trainer.max_epochs`"):
        PhaseScheduler().get_beta(3)


def test_constant_and_milestone_schedules():
    assert PhaseScheduler(schedule="constant", value=1.3).get_beta(7) == 1.3
    milestones = PhaseScheduler(schedule="milestones", milestones={5: 0.5, 2: 2.0})
    assert milestones.epochs == [0, 2, 5]
    assert [milestones.get_beta(e) for e in range(7)] == [1.0, 1.0, 2.0, 2.0, 2.0, 0.5, 0.5]
    assert PhaseScheduler(schedule="milestones", milestones={0: 3.0}).get_beta(9) == 3.0


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, [_eq5(k, 4) for k in range(4)]),  # K = max_epochs = 4
        ({"total_steps": 10}, [_eq5(k, 10) for k in range(4)]),
        ({"schedule": "constant", "value": 0.5}, [0.5] * 4),
        ({"schedule": "milestones", "milestones": {1: 2.0, 3: 1.5}}, [1.0, 2.0, 2.0, 1.5]),
    ],
)
def test_training_step_k_sees_beta_k(tmp_path, kwargs, expected):
    module = _fit(tmp_path, PhaseScheduler(**kwargs), max_epochs=4)
    assert module.betas() == module.rollouts == pytest.approx(expected)


def test_resumed_fit_sees_the_betas_of_an_uninterrupted_one(tmp_path):
    straight = _fit(tmp_path / "straight", PhaseScheduler(total_steps=4), max_epochs=4)
    _fit(tmp_path / "split", PhaseScheduler(total_steps=4), max_epochs=2)
    callback = PhaseScheduler(total_steps=4)
    resumed = _fit(tmp_path / "split", callback, max_epochs=4, ckpt_path=tmp_path / "split" / "last.ckpt")
    assert resumed.betas() == straight.betas()[2:] == pytest.approx([_eq5(2, 4), _eq5(3, 4)])
    # Lightning loads the resumed run's first rollouts twice (the second at epoch 2's start): both see beta_2
    assert resumed.rollouts == pytest.approx([_eq5(2, 4), _eq5(2, 4), _eq5(3, 4)])
    assert callback.state_dict() == {"total_steps": 4, "epoch": 4, "beta": pytest.approx(_eq5(4, 4))}


def test_extending_a_run_follows_the_new_k_and_warns(tmp_path):
    _fit(tmp_path, PhaseScheduler(), max_epochs=2)  # K = 2 from max_epochs
    with pytest.warns(UserWarning, match="K=2 but this run has K=4"):
        resumed = _fit(tmp_path, PhaseScheduler(), max_epochs=4, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.betas() == pytest.approx([_eq5(2, 4), _eq5(3, 4)])


def test_resume_without_scheduler_state_uses_the_restored_epoch(tmp_path):
    _fit(tmp_path, PhaseScheduler(schedule="constant"), max_epochs=2)  # saves under another state_key
    resumed = _fit(tmp_path, PhaseScheduler(), max_epochs=4, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.betas() == pytest.approx([_eq5(2, 4), _eq5(3, 4)])


def test_state_key_tells_schedules_apart():
    assert PhaseScheduler().state_key != PhaseScheduler(schedule="constant").state_key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedule": "cosine"}, "`schedule` must be"),
        ({"gamma": -1.0}, "`gamma` must be"),
        ({"gamma": math.inf}, "`gamma` must be"),
        ({"total_steps": 0}, "`total_steps` must be >= 1"),
        ({"schedule": "constant", "value": -0.5}, "`value` must be"),
        ({"schedule": "milestones"}, "needs `milestones`"),
        ({"schedule": "milestones", "milestones": {-1: 1.0}}, "integer epochs >= 0"),
        ({"schedule": "milestones", "milestones": {2: -1.0}}, "betas >= 0"),
        ({"schedule": "milestones", "milestones": {1.5: 1.0}}, "integer epochs"),
        ({"milestones": {3: 1.0}}, "only apply to schedule='milestones'"),
    ],
)
def test_bad_arguments_say_what_to_change(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PhaseScheduler(**kwargs)


def test_missing_k_is_rejected_at_setup(tmp_path):
    trainer = Trainer(default_root_dir=tmp_path, logger=False, max_epochs=-1, max_steps=2, callbacks=[PhaseScheduler()])
    with pytest.raises(ValueError, match="set `total_steps` or `trainer.max_epochs`"):
        trainer.fit(StandIn())


def test_a_module_without_beta_is_rejected_at_setup(tmp_path):
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, callbacks=[PhaseScheduler()])
    with pytest.raises(AttributeError, match="expose `beta`"):
        trainer.fit(BoringModel())


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, 1.0),
        (75, 1.0 - 0.2 * (1.0 - math.exp(-2.0))),
        (76, 0.8 * math.exp(-3.0 / 75)),
        (125, 0.8 * math.exp(-2.0)),
        (150, 0.8 * math.exp(-3.0)),
    ],
)
def test_code_piecewise_schedule_is_the_released_code_weight(epoch, expected):
    # released code: K = 150, half 75; 0.827 at the half, a jump to 0.8 after it, 0.108 at 125, 0.040 at 150
    assert PhaseScheduler("code_piecewise").get_beta(epoch) == pytest.approx(expected, abs=1e-4)


def test_a_beta_above_two_that_breaks_assumption_a4_with_the_module_s_alpha_is_announced_at_setup(tmp_path):
    from epo_lightning.module import EPOModule

    module = EPOModule(loss={"alpha": 0.1})
    with pytest.warns(UserWarning, match=r"beta reaches 12 .* alpha \* beta_max = 1.2 violates Assumption A.4"):
        PhaseScheduler(schedule="constant", value=12.0).setup(make_trainer(tmp_path), module, "fit")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*Assumption A.4")
        PhaseScheduler(schedule="milestones", milestones={0: 5.0}).setup(make_trainer(tmp_path), module, "fit")
