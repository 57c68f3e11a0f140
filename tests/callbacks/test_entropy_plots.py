import importlib.util

import pytest
import torch
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
