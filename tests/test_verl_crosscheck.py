"""Our objective math against verl 0.9.1's ``core_algos`` on random tensors, to float32 tolerance (issue 3, item 4)."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from epo_lightning.advantages import gae_advantages, grpo_advantages, rloo_advantages
from epo_lightning.critic import value_loss
from epo_lightning.logprobs import response_logprobs_and_entropy
from epo_lightning.losses import EPOLossConfig, epo_loss, kl_penalty, masked_mean
from tests.verl_reference import actor_config, load_core_algos

SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def verl():
    return load_core_algos()


def _inputs(seed: int, rows: int = 6, width: int = 9, spread: float = 0.3):
    generator = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, width, generator=generator) * 3
    new = old + torch.randn(rows, width, generator=generator) * spread
    advantages = torch.randn(rows, width, generator=generator)
    lengths = torch.randint(1, width + 1, (rows,), generator=generator)
    mask = (torch.arange(width) < lengths[:, None]).float()  # padded rows of different lengths
    return old, new, advantages, mask


def _our_pg(new, old, advantages, mask, **config):
    cfg = EPOLossConfig(smoothing="off", agg="token_mean", **config)
    loss, stats = epo_loss(new, old, torch.zeros_like(new), advantages, mask, None, cfg, entropy_coef=0.0)
    return loss, stats


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("low", "high", "dual"), [(0.2, 0.2, None), (0.2, 0.2, 3.0), (0.2, 0.28, 3.0)])
def test_policy_loss_vanilla_dual_clip_and_clip_higher(verl, seed, low, high, dual):
    old, new, advantages, mask = _inputs(seed)
    # verl always dual-clips; a huge clip_ratio_c switches it off for the plain-PPO comparison
    config = actor_config(clip_ratio=low, clip_ratio_low=low, clip_ratio_high=high, clip_ratio_c=dual or 1e9)
    expected, metrics = verl.compute_policy_loss_vanilla(old, new, advantages, mask, "token-mean", config)
    ours, stats = _our_pg(new, old, advantages, mask, clip_low=low, clip_high=high, dual_clip=dual)
    torch.testing.assert_close(ours, expected)
    assert float(stats.clip_frac) >= metrics["actor/pg_clipfrac"] - 1e-6  # ours also counts the dual clip


@pytest.mark.parametrize("seed", SEEDS)
def test_clip_cov_when_every_candidate_is_selected(verl, seed):
    # a ratio of 1 selects all candidates, so verl's random draw and ours pick the same set
    old, new, advantages, mask = _inputs(seed, spread=0.05)
    policy_loss = {"clip_cov_ratio": 1.0, "clip_cov_lb": 0.0, "clip_cov_ub": 2.0}
    config = actor_config(policy_loss=policy_loss)
    expected, metrics = verl.compute_policy_loss_clip_cov(old, new, advantages, mask, "token-mean", config)
    ours, stats = _our_pg(
        new,
        old,
        advantages,
        mask,
        dual_clip=None,
        policy_loss="clip_cov",
        clip_cov_ratio=1.0,
        clip_cov_lb=0.0,
        clip_cov_ub=2.0,
    )
    torch.testing.assert_close(ours, expected)
    assert float(stats.cov_selected_frac) == pytest.approx(metrics["actor/pg_clipfrac"], abs=1e-6)
    assert float(stats.cov_selected_frac) > 0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ratio", [2e-4, 0.1, 0.5])
def test_kl_cov(verl, seed, ratio):
    old, new, advantages, mask = _inputs(seed)
    config = actor_config(policy_loss={"kl_cov_ratio": ratio, "ppo_kl_coef": 1.0})
    expected, _ = verl.compute_policy_loss_kl_cov(old, new, advantages, mask, "token-mean", config)
    ours, _ = _our_pg(new, old, advantages, mask, policy_loss="kl_cov", kl_cov_ratio=ratio)
    torch.testing.assert_close(ours, expected)


def _groups(seed: int, rows: int = 24):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 2, (rows,), generator=generator).float() - 0.1 * torch.randint(0, 2, (rows,))
    index = torch.randint(0, 4, (rows,), generator=generator)
    index[index == 3] = 2  # no single-row groups here; they are a documented convention difference (below)
    return scores, index


def _token_rewards(scores: torch.Tensor, width: int = 5):
    rewards = torch.zeros(len(scores), width)
    rewards[:, -1] = scores
    return rewards, torch.ones(len(scores), width)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("normalize_std", [True, False])
def test_grpo_advantages(verl, seed, normalize_std):
    scores, index = _groups(seed)
    rewards, mask = _token_rewards(scores)
    expected, _ = verl.compute_grpo_outcome_advantage(
        rewards, mask, np.array(index.tolist()), norm_adv_by_std_in_grpo=normalize_std
    )
    ours = grpo_advantages(scores, index, normalize_std=normalize_std)
    torch.testing.assert_close(ours, expected[:, 0])


@pytest.mark.parametrize("seed", SEEDS)
def test_rloo_advantages(verl, seed):
    scores, index = _groups(seed)
    rewards, mask = _token_rewards(scores)
    expected, _ = verl.compute_rloo_outcome_advantage(rewards, mask, np.array(index.tolist()))
    torch.testing.assert_close(rloo_advantages(scores, index), expected[:, 0])


def test_single_row_groups_get_zero_where_verl_gives_the_raw_score(verl):
    scores, index = torch.tensor([0.7, 1.0, 0.0]), torch.tensor([5, 6, 6])
    rewards, mask = _token_rewards(scores)
    verl_grpo, _ = verl.compute_grpo_outcome_advantage(rewards, mask, np.array(index.tolist()))
    assert float(verl_grpo[0, 0]) == pytest.approx(0.7 / (1 + 1e-6))  # verl: mean 0, std 1 for a lone row
    assert float(grpo_advantages(scores, index)[0]) == 0.0  # ours: no baseline, no signal


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 1.0), (0.99, 0.95)])
def test_gae_advantages_and_returns(verl, seed, gamma, lam):
    _, values, rewards, mask = _inputs(seed)
    expected_adv, expected_ret = verl.compute_gae_advantage_return(rewards, values, mask, gamma, lam)
    advantages, returns = gae_advantages(rewards, values, mask, gamma, lam, whiten=True)
    on = mask.bool()
    torch.testing.assert_close(advantages[on], expected_adv[on])
    torch.testing.assert_close(returns[on], expected_ret[on])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clip", [0.5, 0.05])
def test_value_loss(verl, seed, clip):
    old_values, values, returns, mask = _inputs(seed)
    expected, expected_frac = verl.compute_value_loss(values, returns, old_values, mask, clip)
    ours, frac = value_loss(values, old_values, returns, mask, clip)
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(frac, torch.as_tensor(expected_frac, dtype=frac.dtype))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("ours", "theirs"), [("k1", "kl"), ("k2", "mse"), ("k3", "low_var_kl")])
def test_kl_estimators(verl, seed, ours, theirs):
    ref, logprobs, _, _ = _inputs(seed, spread=1.0)
    torch.testing.assert_close(kl_penalty(logprobs, ref, ours), verl.kl_penalty(logprobs, ref, theirs))


def test_entropy_and_logprobs_from_a_real_model_match_verl_on_its_logits():
    load_core_algos()
    from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 50, (3, 7))
    attention = torch.ones_like(ids)
    mask = torch.zeros(3, 7)
    mask[:, 4:] = 1
    temperature = 0.7
    logprobs, entropy = response_logprobs_and_entropy(model, ids, attention, mask, temperature, chunk_size=4)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits[:, 3:-1] / temperature
    torch.testing.assert_close(entropy[:, 4:], entropy_from_logits(logits), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logprobs[:, 4:], logprobs_from_logits(logits, ids[:, 4:]), rtol=1e-5, atol=1e-5)
    assert masked_mean(entropy, mask) > 0
