import math

import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from torchmetrics import MeanMetric

from callbacks import AdaptiveEntropyCoef
from tests.conftest import make_trainer


def test_first_step_anchors_the_target_and_keeps_the_coefficient():
    callback = AdaptiveEntropyCoef(target_ratio=0.5, lr=0.1, initial_coef=1e-3)
    assert callback.update(2.0) == 1e-3
    assert callback.target == 1.0


def test_update_is_a_log_space_step_on_the_relative_gap():
    callback = AdaptiveEntropyCoef(target_ratio=0.5, lr=0.1, initial_coef=1e-3)
    callback.update(2.0)  # H_0 = 2, target 1
    # entropy 1.5 is above the target: gap (1 - 1.5) / 1 = -0.5, lambda shrinks by exp(-0.05)
    assert callback.update(1.5) == pytest.approx(1e-3 * math.exp(-0.05))
    # entropy 0.5 is below it: gap +0.5, lambda grows by exp(+0.05)
    assert callback.update(0.5) == pytest.approx(1e-3)


def test_coefficient_stays_within_its_bounds():
    callback = AdaptiveEntropyCoef(target_ratio=1.0, lr=10.0, initial_coef=1e-3, min_coef=1e-4, max_coef=1e-2)
    callback.update(1.0)
    assert callback.update(0.0) == 1e-2
    assert callback.update(100.0) == 1e-4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_ratio": 0.0}, "target_ratio"),
        ({"lr": -1.0}, "lr"),
        ({"min_coef": 1e-2, "max_coef": 1e-3}, "min_coef"),
        ({"initial_coef": 1.0}, "initial_coef"),
    ],
)
def test_bad_arguments_say_what_to_change(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveEntropyCoef(**kwargs)


class RolloutStandIn(BoringModel):
    """Rollout entropy 2.0 at step 0, then 1.0 forever; records the coefficient each training step sees."""

    def __init__(self) -> None:
        super().__init__()
        self.entropy_coef = 1e-3
        self.rollout_entropy = MeanMetric()
        self.seen: list[float] = []

    def train_dataloader(self):
        self.rollout_entropy.reset()
        self.rollout_entropy.update(torch.tensor(2.0 if self.trainer.current_epoch == 0 else 1.0))
        return super().train_dataloader()

    def training_step(self, batch, batch_idx):
        self.seen.append(self.entropy_coef)
        return super().training_step(batch, batch_idx)


def test_in_a_fit_the_coefficient_grows_while_entropy_sits_below_target(tmp_path):
    module = RolloutStandIn()
    trainer = make_trainer(
        tmp_path,
        max_epochs=3,
        limit_train_batches=1,
        limit_val_batches=0,
        callbacks=[AdaptiveEntropyCoef(target_ratio=0.75, lr=0.2)],
    )
    trainer.fit(module)
    # H_0 = 2 -> target 1.5; entropy 1.0 gives gap +1/3 each step: lambda *= exp(0.2 / 3)
    step = math.exp(0.2 / 3)
    assert module.seen == pytest.approx([1e-3, 1e-3 * step, 1e-3 * step**2])
