"""``epo_lightning.tensorboard_scalars``: values and wall times read back as they were written."""

from __future__ import annotations

from torch.utils.tensorboard import SummaryWriter

from epo_lightning.tensorboard_scalars import read_scalars, read_wall_times


def test_scalars_and_their_wall_times_come_back_in_logging_order(tmp_path):
    writer = SummaryWriter(str(tmp_path / "version_0"))
    for step, (value, wall) in enumerate([(0.5, 1000.0), (0.25, 1002.5), (0.75, 1007.0)]):
        writer.add_scalar("time/train_s", value, step, walltime=wall)
        writer.add_scalar("other", -value, step, walltime=wall + 0.5)
    writer.close()

    assert read_scalars(tmp_path)["time/train_s"] == [(0, 0.5), (1, 0.25), (2, 0.75)]
    assert read_scalars(tmp_path)["other"] == [(0, -0.5), (1, -0.25), (2, -0.75)]
    assert read_wall_times(tmp_path, "time/train_s") == [1000.0, 1002.5, 1007.0]
    assert read_wall_times(tmp_path, "missing") == []
