import math

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks import EntropyHistory
from tests.callbacks.stand_in import StandIn
from tests.conftest import make_trainer


@pytest.mark.parametrize(
    ("kwargs", "history", "expected"),
    [
        ({}, [], None),
        ({}, [1.0], 1.0),
        ({}, [1.0, 2.0, 4.0], 7 / 3),
        ({"mode": "window", "window": 2}, [1.0, 2.0, 4.0], 3.0),
        ({"mode": "ema", "ema_decay": 0.5}, [1.0, 2.0, 4.0], 0.5 * (0.5 * 1 + 0.5 * 2) + 0.5 * 4),
        ({"warmup_steps": 3}, [1.0, 2.0], None),
    ],
)
def test_reference_lookup(kwargs, history, expected):
    reference = EntropyHistory(**kwargs).reference(history)
    assert reference == (None if expected is None else pytest.approx(expected))


def _fit(tmp_path, callback, max_epochs, ckpt_path=None, checkpoint=False):
    module = StandIn()
    callbacks = [callback] + ([ModelCheckpoint(dirpath=tmp_path, save_last=True)] if checkpoint else [])
    trainer = make_trainer(tmp_path, max_epochs=max_epochs, callbacks=callbacks, enable_checkpointing=checkpoint)
    trainer.fit(module, ckpt_path=ckpt_path)
    return module


@pytest.mark.parametrize(
    ("kwargs", "references"),
    [
        ({}, [None, 1.0, 1.5, 2.0]),  # entropies 1, 2, 3 -> cumulative means
        ({"mode": "window", "window": 1}, [None, 1.0, 2.0, 3.0]),
        ({"mode": "ema", "ema_decay": 0.5}, [None, 1.0, 1.5, 2.25]),
    ],
)
def test_training_sees_the_reference_of_past_steps_only(tmp_path, kwargs, references):
    module = _fit(tmp_path, EntropyHistory(**kwargs), max_epochs=4)
    assert [module.seen[epoch][0] for epoch in range(4)] == references


def test_history_survives_a_checkpoint_resume(tmp_path):
    straight = _fit(tmp_path / "a", EntropyHistory(), max_epochs=4)
    _fit(tmp_path / "b", EntropyHistory(), max_epochs=2, checkpoint=True)
    resumed_callback = EntropyHistory()
    resumed = _fit(
        tmp_path / "b", resumed_callback, max_epochs=4, ckpt_path=tmp_path / "b" / "last.ckpt", checkpoint=True
    )
    assert resumed.seen[2] == straight.seen[2] and resumed.seen[3] == straight.seen[3]
    assert resumed_callback.history == [1.0, 2.0, 3.0, 4.0]


def test_state_key_tells_instances_apart():
    assert EntropyHistory().state_key != EntropyHistory(mode="window", window=5).state_key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "median"}, "mode"),
        ({"mode": "window"}, "window >= 1"),
        ({"window": 3}, "only applies"),
        ({"mode": "ema", "ema_decay": 1.0}, "ema_decay"),
        ({"warmup_steps": 0}, "warmup_steps"),
    ],
)
def test_bad_arguments_say_what_to_change(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EntropyHistory(**kwargs)


def test_a_diverged_entropy_is_an_error_not_a_silent_nan():
    with pytest.raises(ValueError, match="diverged"):
        EntropyHistory().append(math.nan)


def test_a_module_without_the_contract_is_rejected_at_setup(tmp_path):
    from lightning.pytorch.demos.boring_classes import BoringModel

    with pytest.raises(AttributeError, match="entropy_reference"):
        make_trainer(tmp_path, callbacks=[EntropyHistory()]).fit(BoringModel())
