"""The quickstart learns: a shortened run raises the IID validation success rate clearly above its start."""

import pytest

from epo_lightning.cli import cli_main
from epo_lightning.tensorboard_scalars import read_scalars


@pytest.mark.slow
def test_shortened_quickstart_improves_validation_success(tmp_path, cache_dir):
    cli_main(
        [
            "fit",
            "--config",
            "configs/quickstart.yaml",
            f"--trainer.default_root_dir={tmp_path}",
            f"--model.init_args.cache_dir={cache_dir}",
            "--trainer.max_epochs=SHORT_EPOCHS",
            "--trainer.check_val_every_n_epoch=SHORT_EPOCHS",
        ]
    )
    scalars = read_scalars(tmp_path)
    curve = [value for _, value in scalars["val/success_rate"]]
    assert len(curve) == 2  # before any update, and after the last epoch
    assert curve[0] <= 0.3
    assert curve[-1] >= curve[0] + 0.2, curve
    valid = [value for _, value in scalars["rollout/valid_action_ratio"]]
    assert valid[-1] > 0.8  # no collapse into invalid output
