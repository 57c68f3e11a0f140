import math

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks import PhaseScheduler
from tests.callbacks.stand_in import StandIn
from tests.conftest import make_trainer


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 2.0), (25, 1 + math.exp(-1.5)), (50, 1 + math.exp(-3.0)), (100, 1 + math.exp(-6.0))],
)
def test_paper_schedule_matches_eq5(epoch, expected):  # K = 100, k_mid = 50, gamma = 3
    assert PhaseScheduler().get_beta(epoch, total_steps=100) == pytest.approx(expected)


def test_paper_table_values_for_alfworld_k150():
    scheduler = PhaseScheduler(total_steps=150)
    assert scheduler.get_beta(75) == pytest.approx(1.0498, abs=1e-4)
    assert scheduler.get_beta(150) == pytest.approx(1.0025, abs=1e-4)


def test_constant_and_milestone_schedules():
    assert PhaseScheduler(schedule="constant", value=1.3).get_beta(7) == 1.3
    milestones = PhaseScheduler(schedule="milestones", milestones={2: 2.0, 5: 0.5})
    assert [milestones.get_beta(e) for e in range(7)] == [1.0, 1.0, 2.0, 2.0, 2.0, 0.5, 0.5]


def test_training_step_k_sees_beta_k(tmp_path):
    module = StandIn()
    make_trainer(tmp_path, max_epochs=4, callbacks=[PhaseScheduler()]).fit(module)
    assert [module.seen[e][1] for e in range(4)] == pytest.approx([1 + math.exp(-3 * e / 2) for e in range(4)])


def test_resume_continues_the_schedule(tmp_path):
    callbacks = [PhaseScheduler(), ModelCheckpoint(dirpath=tmp_path, save_last=True)]
    make_trainer(tmp_path, max_epochs=2, callbacks=callbacks, enable_checkpointing=True).fit(StandIn())
    module = StandIn()
    callbacks = [PhaseScheduler(), ModelCheckpoint(dirpath=tmp_path, save_last=True)]
    trainer = make_trainer(tmp_path, max_epochs=4, callbacks=callbacks, enable_checkpointing=True)
    with pytest.warns(UserWarning, match="K=2 but this run has K=4"):
        trainer.fit(module, ckpt_path=tmp_path / "last.ckpt")
    # extending a run: K is the new config's (4), as in an uninterrupted 4-epoch run
    assert [module.seen[e][1] for e in (2, 3)] == pytest.approx([1 + math.exp(-3 * e / 2) for e in (2, 3)])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedule": "cosine"}, "schedule"),
        ({"gamma": -1.0}, "gamma"),
        ({"total_steps": 0}, "total_steps"),
        ({"schedule": "milestones"}, "needs milestones"),
        ({"schedule": "milestones", "milestones": {-1: 1.0}}, "epochs >= 0"),
        ({"milestones": {3: 1.0}}, "only apply"),
    ],
)
def test_bad_arguments_say_what_to_change(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PhaseScheduler(**kwargs)
