import importlib.util

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from callbacks import EntropyHistory, EntropyPlots, PhaseScheduler
from datamodules.rollout_datamodule import RolloutDataModule
from epo_lightning.errors import ConfigurationError
from epo_lightning.module import EPOModule
from tests.conftest import EASY_DATA, TEST_PRESET, make_trainer

needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")


@needs_matplotlib
def test_the_heatmap_and_the_corridor_are_drawn_from_what_each_step_trained_with(cache_dir, tmp_path):
    plots = EntropyPlots(every_n_steps=2)
    module = EPOModule(tiny=TEST_PRESET, cache_dir=str(cache_dir))
    trainer = make_trainer(
        tmp_path, max_epochs=3, limit_val_batches=0, logger=TensorBoardLogger(tmp_path, name="tb"),
        callbacks=[EntropyHistory(), PhaseScheduler(), plots],
    )  # fmt: skip
    trainer.fit(module, datamodule=RolloutDataModule(**EASY_DATA))
    assert len(plots.turns) == len(plots.means) == 3
    assert plots.means[-1] == pytest.approx(float(trainer.callback_metrics["entropy/token_mean"]), rel=1e-6)
    # step 0 trained without a reference; step 1 with H_ref = step 0's mean entropy (cumulative history)
    assert torch.isnan(torch.tensor(plots.references[0])) and plots.references[1] == pytest.approx(plots.means[0])
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    for tag in ("entropy/turn_by_step", "entropy/corridor"):
        assert [image.step for image in events.Images(tag)] == [1, 2]  # after steps 2 and 3 (the last)
        assert events.Images(tag)[0].width > 100


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None, reason="matplotlib is installed here")
def test_without_matplotlib_the_callback_is_refused_at_setup(cache_dir, tmp_path):
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[EntropyPlots()])
    with pytest.raises(ConfigurationError, match="pip install matplotlib"):
        trainer.fit(EPOModule(tiny=TEST_PRESET, cache_dir=str(cache_dir)), datamodule=RolloutDataModule(**EASY_DATA))


class _StopAfterTwoSteps(Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = trainer.current_epoch == 1


@needs_matplotlib
def test_the_plots_read_each_step_s_reference_survive_a_resume_and_are_drawn_when_a_run_stops_early(
    cache_dir, tmp_path
):
    def fit(plots, max_epochs, ckpt_path=None, stop=()):
        # listed before EntropyHistory(include_current=True), which sets a step's reference when the step starts
        callbacks = [plots, EntropyHistory(include_current=True), *stop]
        callbacks.append(ModelCheckpoint(tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True))
        logger = TensorBoardLogger(tmp_path, name="tb")
        trainer = make_trainer(
            tmp_path, max_epochs=max_epochs, limit_val_batches=0, logger=logger, callbacks=callbacks,
            enable_checkpointing=True,
        )  # fmt: skip
        trainer.fit(EPOModule(tiny=TEST_PRESET, cache_dir=str(cache_dir)), datamodule=RolloutDataModule(**EASY_DATA),
                    ckpt_path=ckpt_path)  # fmt: skip
        return trainer

    first = EntropyPlots(every_n_steps=5)
    trainer = fit(first, max_epochs=5, stop=[_StopAfterTwoSteps()])
    assert len(first.means) == 2  # stopped after step 1
    assert first.references[1] == pytest.approx(float(trainer.callback_metrics["entropy/reference"]), rel=1e-6)
    resumed = EntropyPlots(every_n_steps=5)
    fit(resumed, max_epochs=3, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.means[:2] == first.means and len(resumed.means) == 3  # the plots go on from the checkpoint
    for version, steps in (("version_0", [1]), ("version_1", [2])):  # drawn when each run ended: steps 2 and 3
        events = EventAccumulator(str(tmp_path / "tb" / version), size_guidance={"images": 0})
        events.Reload()
        assert [image.step for image in events.Images("entropy/corridor")] == steps
