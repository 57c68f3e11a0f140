"""The quickstart learns: a shortened run raises the IID validation success rate clearly above its start.

Slow (builds the quickstart's format prior, then 10 RL steps; ~7 minutes on 2 cores): ``pytest -m slow``.
"""

import pytest

from epo_lightning.cli import cli_main
from epo_lightning.tensorboard_scalars import read_scalars


@pytest.mark.slow
def test_shortened_quickstart_improves_validation_success(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr("sys.argv", ["epo"])
    cli_main(
        [
            "fit",
            "--config",
            "configs/quickstart.yaml",
            f"--trainer.default_root_dir={tmp_path}",
            f"--model.init_args.cache_dir={cache_dir}",
            "--trainer.max_epochs=10",
            "--trainer.enable_progress_bar=false",
        ]
    )
    scalars = read_scalars(tmp_path)
    curve = [value for _, value in scalars["val/success_rate"]]
    assert len(curve) == 2  # before any update, and after RL step 10
    assert curve[0] <= 0.3
    assert curve[-1] >= curve[0] + 0.15, curve
    assert scalars["rollout/valid_action_ratio"][-1][1] > 0.8  # no collapse into invalid output
