import math

import pytest
import torch

from epo_lightning.lr_schedules import WarmupCosineLR


def test_warmup_then_half_cosine_to_the_floor():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = WarmupCosineLR(optimizer, total_steps=20, warmup_ratio=0.1, min_lr_ratio=0.2)
    lrs = []
    for _ in range(21):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])  # 2 warmup steps from 0
    assert lrs[11] == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi * 9 / 18)) / 2)  # halfway down: 0.6
    assert lrs[20] == pytest.approx(0.2) and min(lrs[2:]) == pytest.approx(0.2)


def test_bad_schedule_settings_say_what_to_change():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosineLR(optimizer, total_steps=0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        WarmupCosineLR(optimizer, total_steps=10, warmup_ratio=1.0)
