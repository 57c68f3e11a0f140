"""Clip-Cov, KL-Cov, Entropy Ratio Clipping and entropy-based advantage shaping: hand values and gradients."""

import pytest
import torch

from epo_lightning.entropy_controls import (
    clip_cov_selection,
    entropy_ratio_outside,
    entropy_shaped_advantages,
    kl_cov_selection,
    token_covariance,
)
from epo_lightning.losses import EPOLossConfig, epo_loss


def test_token_covariance_by_hand():
    logprobs = torch.tensor([[-1.0, -3.0, 9.0]])
    advantages = torch.tensor([[2.0, 0.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the padded position is left out of the means
    # mean log pi = -2, mean A = 1: (2 - 1) * (-1 + 2) = 1 and (0 - 1) * (-3 + 2) = 1
    torch.testing.assert_close(token_covariance(logprobs, advantages, mask)[:, :2], torch.tensor([[1.0, 1.0]]))


def test_kl_cov_selects_the_top_covariance_tokens_only_among_response_tokens():
    covariance = torch.tensor([[0.5, 3.0, 9.0], [2.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    selected = kl_cov_selection(covariance, mask, ratio=0.4)  # 5 response tokens -> 2, the padded 9.0 never
    assert selected.tolist() == [[False, True, False], [True, False, False]]


def test_clip_cov_draws_within_bounds_skips_clipped_tokens_and_is_reproducible():
    covariance = torch.tensor([[1.5, 2.0, 4.0, 6.0, 3.0]])
    mask = torch.ones(1, 5)
    clipped = torch.tensor([[False, False, False, False, True]])
    draws = {
        tuple(clip_cov_selection(covariance, mask, clipped, 0.4, 1.0, 5.0, torch.Generator().manual_seed(s)).flatten())
        for s in range(20)
    }
    assert all(sum(d) == 2 and not d[3] and not d[4] for d in draws)  # 6.0 is above ub, 3.0 was clipped by PPO
    assert len(draws) > 1  # the choice among the three candidates is random...
    first = clip_cov_selection(covariance, mask, clipped, 0.4, 1.0, 5.0, torch.Generator().manual_seed(3))
    again = clip_cov_selection(covariance, mask, clipped, 0.4, 1.0, 5.0, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)  # ...and fixed by the generator


def _loss_grad(config, logprobs, old, entropy, advantages, mask, old_entropy=None):
    logprobs = logprobs.clone().requires_grad_(True)
    entropy = entropy.clone().requires_grad_(True)
    loss, stats = epo_loss(
        logprobs,
        old,
        entropy,
        advantages,
        mask,
        None,
        config,
        entropy_coef=0.0,
        old_entropy=old_entropy,
        generator=torch.Generator().manual_seed(0),
    )
    loss.backward()
    return logprobs.grad, entropy.grad, stats


def test_clip_cov_selected_tokens_get_no_policy_gradient():
    logprobs = torch.tensor([[-1.0, -0.5, -2.0, -1.5]])  # ratio 1 everywhere: PPO clips nothing
    advantages = torch.tensor([[3.0, 3.0, -1.0, 0.0]])
    # Cov = (A - 1.25) * (log pi + 1.25) = 0.44, 1.31, 1.69, 0.31: tokens 1 and 2 lie in (1, 5); 25% of 4 -> 1 drawn
    config = EPOLossConfig(policy_loss="clip_cov", clip_cov_ratio=0.25, agg="token_mean")
    grad, _, stats = _loss_grad(config, logprobs, logprobs, torch.ones(1, 4), advantages, torch.ones(1, 4))
    assert float(stats.cov_selected_frac) == 0.25
    assert grad[0, 0] != 0 and grad[0, 3] == 0  # a token outside the bounds trains; A = 0 has no gradient anyway
    assert int((grad[0, 1:3] == 0).sum()) == 1  # exactly one of the two candidates was detached


def test_erc_stops_the_gradient_where_the_entropy_ratio_left_the_band():
    old_entropy = torch.tensor([[1.0, 1.0, 1.0]])
    entropy = torch.tensor([[1.01, 1.2, 0.5]])  # ratio 1.01 inside (0.95, 1.05); 1.2 and 0.5 outside
    assert entropy_ratio_outside(entropy, old_entropy, 0.95, 1.05).tolist() == [[False, True, True]]
    config = EPOLossConfig(erc_low=0.95, erc_high=1.05, agg="token_mean")
    logprobs = torch.tensor([[-1.0, -1.0, -1.0]])
    grad, _, stats = _loss_grad(config, logprobs, logprobs, entropy, torch.ones(1, 3), torch.ones(1, 3), old_entropy)
    assert grad[0, 0] != 0 and grad[0, 1] == 0 and grad[0, 2] == 0
    assert float(stats.erc_clip_frac) == pytest.approx(2 / 3)


def test_erc_without_old_entropy_says_what_is_missing():
    config = EPOLossConfig(erc_low=0.95, erc_high=1.05, agg="token_mean")
    with pytest.raises(ValueError, match="old_entropy"):
        epo_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1), torch.ones(1, 2), None, config)


def test_entropy_advantage_shaping_by_hand_and_without_entropy_gradient():
    advantages = torch.tensor([[1.0, -1.0, 0.0, 4.0]])
    entropy = torch.tensor([[0.5, 3.0, 1.0, 1.0]], requires_grad=True)
    shaped = entropy_shaped_advantages(advantages, entropy, alpha=0.4, kappa=2.0)
    # min(0.4 H, |A| / 2): 0.2, 0.5 (capped), 0 (A = 0 caps it at 0), 0.4
    torch.testing.assert_close(shaped, torch.tensor([[1.2, -0.5, 0.0, 4.4]]))
    assert not shaped.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"policy_loss": "clip"}, "policy_loss"),
        ({"clip_cov_ratio": 0.0}, "clip_cov_ratio"),
        ({"clip_cov_lb": 5.0, "clip_cov_ub": 1.0}, "clip_cov_lb"),
        ({"erc_low": 0.95}, "erc_low and erc_high"),
        ({"erc_low": 1.05, "erc_high": 0.95}, "0 < erc_low < 1 < erc_high"),
        ({"ea_kappa": 1.0}, "ea_kappa"),
    ],
)
def test_bad_entropy_control_settings_say_what_to_change(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EPOLossConfig(**kwargs)
