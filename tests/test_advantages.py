"""GRPO group-normalized advantages against hand arithmetic and a naive per-group loop."""

from __future__ import annotations

import math

import pytest
import torch

from epo_lightning.advantages import grpo_advantages


def naive_grpo(scores, groups, normalize_std, eps=1e-6):
    out = torch.zeros_like(scores)
    for g in set(groups.tolist()):
        members = (groups == g).nonzero().flatten().tolist()
        values = scores[members]
        if len(members) == 1:
            out[members] = 0.0
            continue
        mean, std = values.mean(), values.std()
        for i in members:
            out[i] = (scores[i] - mean) / (std + eps) if normalize_std else scores[i] - mean
    return out


def test_grpo_by_hand():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0, 2.0, 4.0])
    groups = torch.tensor([0, 0, 0, 0, 11, 3, 3])
    # group 0: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3); group 11: single row -> 0;
    # group 3: mean 3, std sqrt((1 + 1) / 1) = sqrt(2).
    a, b = 0.5 / (math.sqrt(1 / 3) + 1e-6), 1.0 / (math.sqrt(2) + 1e-6)
    expected = torch.tensor([a, -a, -a, a, 0.0, -b, b])
    torch.testing.assert_close(grpo_advantages(scores, groups), expected)
    centered = torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, -1.0, 1.0])
    torch.testing.assert_close(grpo_advantages(scores, groups, normalize_std=False), centered)


@pytest.mark.parametrize("normalize_std", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grpo_matches_naive(normalize_std, seed):
    gen = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, 6, (40,), generator=gen) * 7  # sparse ids, uneven (possibly singleton) group sizes
    scores = torch.randn(40, generator=gen) * 3
    expected = naive_grpo(scores, groups, normalize_std)
    torch.testing.assert_close(grpo_advantages(scores, groups, normalize_std=normalize_std), expected)


def test_singletons_and_constant_groups_are_zero():
    scores = torch.tensor([10.0, -3.0, 2.0, 2.0, 2.0])
    advantages = grpo_advantages(scores, torch.tensor([0, 1, 2, 2, 2]))
    assert advantages.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0]
    assert torch.isfinite(advantages).all()


def test_integer_scores_and_shape_errors():
    advantages = grpo_advantages(torch.tensor([1, 0]), torch.tensor([4, 4]), normalize_std=False)
    assert advantages.dtype == torch.float32 and advantages.tolist() == [0.5, -0.5]
    with pytest.raises(ValueError, match="1-D"):
        grpo_advantages(torch.zeros(3), torch.zeros(4, dtype=torch.long))
