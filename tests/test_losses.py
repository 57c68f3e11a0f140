"""The EPO objective: every term against hand arithmetic and against naive per-token loops."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from epo_lightning.losses import (
    EPOLossConfig,
    aggregate,
    epo_loss,
    kl_penalty,
    masked_mean,
    ppo_clip_loss,
    smoothing_penalty,
)

# ---------------------------------------------------------------------------------------------- naive references


def naive_token_mean(values, mask):
    tokens = [values[b][t] for b in range(len(values)) for t in range(len(values[b])) if mask[b][t]]
    return sum(tokens) / len(tokens) if tokens else 0.0


def naive_turn_traj_mean(values, mask, traj):
    per_traj: dict[int, list[float]] = {}
    for b in range(len(values)):
        tokens = [values[b][t] for t in range(len(values[b])) if mask[b][t]]
        if tokens:
            per_traj.setdefault(traj[b], []).append(sum(tokens) / len(tokens))
    if not per_traj:
        return 0.0
    return sum(sum(turns) / len(turns) for turns in per_traj.values()) / len(per_traj)


def naive_agg(values, mask, mode, traj):
    values, mask, traj = values.tolist(), mask.tolist(), traj.tolist()
    return naive_token_mean(values, mask) if mode == "token_mean" else naive_turn_traj_mean(values, mask, traj)


def naive_ppo(logp, old, adv, mask, clip_low, clip_high, dual_clip):
    loss, clipped = torch.zeros_like(logp), torch.zeros_like(logp, dtype=torch.bool)
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not mask[b, t]:
                continue
            a, r = adv[b].item(), math.exp(logp[b, t].item() - old[b, t].item())
            plain, clip = -a * r, -a * min(max(r, 1 - clip_low), 1 + clip_high)
            value, was_clipped = max(plain, clip), clip > plain
            if dual_clip is not None and a < 0 and value > -a * dual_clip:
                value, was_clipped = -a * dual_clip, True
            loss[b, t], clipped[b, t] = value, was_clipped
    return loss, clipped


def naive_kl(logp, ref, kind):
    out = torch.zeros_like(logp)
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            d = logp[b, t].item() - ref[b, t].item()
            if kind == "k1":
                out[b, t] = d
            elif kind == "k2":
                out[b, t] = 0.5 * d * d
            else:
                out[b, t] = min(max(math.exp(-d) + d - 1, -10.0), 10.0)
    return out


def naive_smooth(entropy, h_ref_rows, kappa_l, kappa_r, alpha, mode):
    out = torch.zeros_like(entropy)
    for b in range(entropy.shape[0]):
        low, high = kappa_l * h_ref_rows[b], kappa_r * h_ref_rows[b]
        for t in range(entropy.shape[1]):
            h = entropy[b, t].item()
            if mode == "hinge":
                out[b, t] = alpha * (max(low - h, 0.0) + max(h - high, 0.0))
            else:
                out[b, t] = 0.0 if low < h < high else alpha
    return out


def random_batch(seed: int, rows: int = 7, width: int = 9):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(rows, width, generator=gen) * 3
    old = logp + torch.randn(rows, width, generator=gen) * 0.6  # ratios well outside [0.8, 1.2] and beyond 3
    adv = torch.randn(rows, generator=gen)
    entropy = torch.rand(rows, width, generator=gen) * 4
    mask = torch.rand(rows, width, generator=gen) < 0.6
    mask[2] = False  # a row with no response token
    traj = torch.tensor([5, 5, 5, 9, 1, 1, 9])[:rows]  # trajectories with 3, 2 and 2 rows, uneven lengths
    return logp, old, adv, entropy, mask, traj


# ---------------------------------------------------------------------------------------------- aggregation


def test_masked_mean_by_hand_and_empty():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 1]])
    assert masked_mean(values, mask).item() == pytest.approx((1 + 2 + 6) / 3)
    empty = masked_mean(values, torch.zeros_like(mask))
    assert empty.item() == 0.0 and not torch.isnan(empty)


def test_aggregate_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [10.0, 0.0, 0.0], [7.0, 7.0, 7.0], [8.0, 8.0, 8.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.bool)
    traj = torch.tensor([7, 7, 2, 7, 4])  # row 3 (traj 7) and traj 4 have no response tokens: ignored
    assert aggregate(values, mask, "token_mean").item() == pytest.approx((1 + 2 + 4 + 5 + 6 + 10) / 6)
    # turn means: 1.5, 5, 10; traj 7 -> (1.5 + 5) / 2 = 3.25, traj 2 -> 10; mean over 2 trajectories.
    assert aggregate(values, mask, "turn_traj_mean", traj).item() == pytest.approx((3.25 + 10) / 2)
    assert aggregate(values, torch.zeros_like(mask), "turn_traj_mean", traj).item() == 0.0


@pytest.mark.parametrize("mode", ["token_mean", "turn_traj_mean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aggregate_matches_naive(mode, seed):
    _, _, _, values, mask, traj = random_batch(seed)
    assert aggregate(values, mask, mode, traj).item() == pytest.approx(naive_agg(values, mask, mode, traj), rel=1e-6)


def test_turn_traj_mean_token_weights():
    """Each token weighs 1 / (n_traj * turns_of_its_traj * tokens_of_its_turn)."""
    values = torch.zeros(4, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    traj = torch.tensor([0, 0, 3, 3])
    aggregate(values, mask, "turn_traj_mean", traj).backward()
    expected = torch.tensor([[1 / 8, 1 / 8, 0, 0], [1 / 16, 1 / 16, 1 / 16, 1 / 16], [1 / 2, 0, 0, 0], [0, 0, 0, 0]])
    torch.testing.assert_close(values.grad, expected)


def test_aggregate_errors():
    values, mask = torch.zeros(2, 2), torch.ones(2, 2)
    with pytest.raises(ValueError, match="traj_index"):
        aggregate(values, mask, "turn_traj_mean")
    with pytest.raises(ValueError, match="aggregation mode"):
        aggregate(values, mask, "seq_mean")


# ---------------------------------------------------------------------------------------------- PPO clip


def test_ppo_clip_by_hand():
    ratios = torch.tensor([[1.5, 0.5, 1.1, 4.0, 0.5]])
    advantages = torch.tensor([[1.0, -1.0, 2.0, -1.0, 1.0]])
    old = torch.full_like(ratios, -2.0)
    logp = old + ratios.log()
    mask = torch.ones_like(ratios)
    loss, clipped = ppo_clip_loss(logp, old, advantages, mask, 0.2, 0.2, dual_clip=3.0)
    # A=+1 r=1.5: max(-1.5, -1.2) = -1.2 clipped. A=-1 r=0.5: max(0.5, 0.8) = 0.8 clipped.
    # A=+2 r=1.1: -2.2 unclipped. A=-1 r=4: max(4, 1.2) = 4 -> dual clip min(4, 3) = 3. A=+1 r=0.5: max(-0.5, -0.8).
    torch.testing.assert_close(loss, torch.tensor([[-1.2, 0.8, -2.2, 3.0, -0.5]]))
    assert clipped.tolist() == [[True, True, False, True, False]]
    loss, clipped = ppo_clip_loss(logp, old, advantages, mask, 0.2, 0.28, dual_clip=None)
    torch.testing.assert_close(loss, torch.tensor([[-1.28, 0.8, -2.2, 4.0, -0.5]]))  # Clip-Higher: 1 + 0.28
    assert clipped.tolist() == [[True, True, False, False, False]]


def test_ppo_masked_positions_are_zero():
    logp, old = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-3.0, -0.5]])
    loss, clipped = ppo_clip_loss(logp, old, torch.tensor([1.0]), torch.tensor([[0, 0]]))
    assert loss.tolist() == [[0.0, 0.0]] and not clipped.any()


def test_ppo_extreme_ratios_have_finite_gradients():
    logp = torch.tensor([[200.0, -200.0, 0.0]], requires_grad=True)  # exp(+-200) overflows / underflows float32
    loss, _ = ppo_clip_loss(logp, torch.zeros(1, 3), torch.tensor([[1.0, -1.0, -1.0]]), torch.ones(1, 3))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logp.grad).all()
    torch.testing.assert_close(loss.detach(), torch.tensor([[-1.2, 0.8, 1.0]]))


@pytest.mark.parametrize(("clip_low", "clip_high", "dual_clip"), [(0.2, 0.2, 3.0), (0.2, 0.28, None), (0.1, 0.3, 1.5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_ppo_matches_naive(clip_low, clip_high, dual_clip, seed):
    logp, old, adv, _, mask, _ = random_batch(seed)
    loss, clipped = ppo_clip_loss(logp, old, adv, mask, clip_low, clip_high, dual_clip)
    ref_loss, ref_clipped = naive_ppo(logp, old, adv, mask, clip_low, clip_high, dual_clip)
    torch.testing.assert_close(loss, ref_loss)
    assert torch.equal(clipped, ref_clipped) and clipped.any() and not clipped.all()
    per_token_adv = adv.unsqueeze(1).expand_as(logp)
    torch.testing.assert_close(ppo_clip_loss(logp, old, per_token_adv, mask, clip_low, clip_high, dual_clip)[0], loss)


# ---------------------------------------------------------------------------------------------- KL


def test_kl_by_hand():
    logp, ref = torch.tensor([[-1.0, -1.0]]), torch.tensor([[-1.5, 29.0]])
    assert kl_penalty(logp, ref, "k1")[0, 0].item() == pytest.approx(0.5)
    assert kl_penalty(logp, ref, "k2")[0, 0].item() == pytest.approx(0.125)
    k3 = kl_penalty(logp, ref, "k3")
    assert k3[0, 0].item() == pytest.approx(math.exp(-0.5) + 0.5 - 1)  # kl = ref - logp = -0.5
    assert k3[0, 1].item() == 10.0  # exp(30) - 31 clamped to 10
    with pytest.raises(ValueError, match="kl kind"):
        kl_penalty(logp, ref, "k4")


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_matches_naive(kind):
    logp, old, *_ = random_batch(3)
    torch.testing.assert_close(kl_penalty(logp, old, kind), naive_kl(logp, old, kind))


def test_k3_gradient_finite_for_far_tokens():
    logp = torch.tensor([[-200.0, -1.0]], requires_grad=True)  # exp(200) overflows float32
    kl_penalty(logp, torch.tensor([[0.0, -1.0]]), "k3").sum().backward()
    assert torch.isfinite(logp.grad).all()


# ---------------------------------------------------------------------------------------------- smoothing


def test_smoothing_by_hand():
    entropy = torch.tensor([[0.2, 1.0, 2.0, 0.5]])
    hinge = smoothing_penalty(entropy, 1.0, kappa_l=0.5, kappa_r=1.5, alpha=0.1, mode="hinge")
    # corridor [0.5, 1.5]: 0.1 * (0.5 - 0.2), 0, 0.1 * (2.0 - 1.5), 0 on the boundary.
    torch.testing.assert_close(hinge, torch.tensor([[0.03, 0.0, 0.05, 0.0]]))
    indicator = smoothing_penalty(entropy, 1.0, kappa_l=0.5, kappa_r=1.5, alpha=0.1, mode="indicator")
    torch.testing.assert_close(indicator, torch.tensor([[0.1, 0.0, 0.1, 0.1]]))  # open interval: 0.5 is outside
    with pytest.raises(ValueError, match="smoothing mode"):
        smoothing_penalty(entropy, 1.0, 0.5, 1.5, 0.1, mode="square")


@pytest.mark.parametrize("mode", ["hinge", "indicator"])
def test_smoothing_matches_naive_with_per_row_reference(mode):
    _, _, _, entropy, _, _ = random_batch(4)
    h_rows = torch.rand(entropy.shape[0], generator=torch.Generator().manual_seed(5)) * 2 + 0.5
    expected = naive_smooth(entropy, h_rows.tolist(), 0.4, 1.3, 0.07, mode)
    torch.testing.assert_close(smoothing_penalty(entropy, h_rows, 0.4, 1.3, 0.07, mode), expected)
    torch.testing.assert_close(smoothing_penalty(entropy, h_rows[:, None], 0.4, 1.3, 0.07, mode), expected)
    scalar = naive_smooth(entropy, [1.7] * entropy.shape[0], 0.4, 1.3, 0.07, mode)
    torch.testing.assert_close(smoothing_penalty(entropy, torch.tensor(1.7), 0.4, 1.3, 0.07, mode), scalar)


def test_hinge_gradient_signs():
    """d(alpha * P)/dH is -alpha below the corridor, 0 inside, +alpha above (Lemma A.11), times the token weight."""
    entropy = torch.tensor([[0.2, 0.7, 1.2, 3.0]], requires_grad=True)
    mask = torch.ones_like(entropy)
    aggregate(smoothing_penalty(entropy, 1.0, 0.5, 1.5, 0.1), mask, "token_mean").backward()
    torch.testing.assert_close(entropy.grad, torch.tensor([[-0.1, 0.0, 0.0, 0.1]]) / 4)
    reference = torch.tensor(1.0, requires_grad=True)
    assert not smoothing_penalty(entropy.detach(), reference, 0.5, 1.5, 0.1).requires_grad  # reference detached


# ---------------------------------------------------------------------------------------------- full objective


def test_epo_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -3.0, -1.0, -1.0]])
    mask = torch.tensor([[0, 1, 1, 1, 1]])
    entropy = torch.tensor([[9.0, 1.0, 3.0, 2.0, 0.5]])
    cfg = EPOLossConfig(kappa_l=0.5, kappa_r=2.0, alpha=0.1)
    loss, stats = epo_loss(
        logp, logp, entropy, torch.tensor([2.0]), mask, torch.tensor([0]), cfg, entropy_coef=0.01, h_ref=1.0, beta=2.0
    )
    # Corridor [0.5, 2]. pg = -2 per token; L_H = (1 + 3 + 2 + 0.5) / 4 = 1.625;
    # alpha*P = 0, 0.1 * (3 - 2), 0 (upper boundary), 0 (lower boundary) -> L_smooth = 0.1 / 4 = 0.025.
    # loss = -2 - 0.01 * (1.625 - 2 * 0.025) = -2.01575; 3 of 4 tokens in the closed corridor.
    assert loss.item() == pytest.approx(-2.01575)
    assert stats.loss_total.item() == pytest.approx(-2.01575)
    assert stats.loss_pg.item() == pytest.approx(-2.0)
    assert stats.loss_entropy.item() == pytest.approx(1.625)
    assert stats.loss_smooth.item() == pytest.approx(0.025)
    assert stats.loss_kl.item() == 0.0
    assert stats.clip_frac.item() == 0.0 and stats.approx_kl.item() == pytest.approx(0.0)
    assert stats.entropy_token_mean.item() == pytest.approx(1.625)
    assert stats.in_corridor_frac.item() == pytest.approx(0.75)


def test_epo_loss_kl_and_approx_kl_by_hand():
    logp, old, ref = torch.tensor([[-1.0, -1.0]]), torch.tensor([[-1.5, -1.0]]), torch.tensor([[-1.5, -1.0]])
    cfg = EPOLossConfig(kl_coef=0.1, kl_kind="k1", dual_clip=None, agg="token_mean")
    loss, stats = epo_loss(
        logp,
        old,
        torch.zeros(1, 2),
        torch.tensor([0.0]),
        torch.ones(1, 2),
        None,
        cfg,
        entropy_coef=0.0,
        ref_logprobs=ref,
    )
    # pg = 0 (A = 0); k1 per token = 0.5, 0 -> 0.25; approx_kl: r = e^0.5 -> (e^0.5 - 1 - 0.5) / 2.
    assert loss.item() == pytest.approx(0.1 * 0.25)
    assert stats.loss_kl.item() == pytest.approx(0.25)
    assert stats.approx_kl.item() == pytest.approx((math.exp(0.5) - 1.5) / 2)


def test_reference_logprobs_without_kl_coef_are_logged_only():
    logp, old, adv, entropy, mask, traj = random_batch(12)
    cfg = EPOLossConfig(kl_coef=0.0)
    loss_with_ref, stats = epo_loss(logp, old, entropy, adv, mask, traj, cfg, ref_logprobs=logp - 0.5)
    loss_without, _ = epo_loss(logp, old, entropy, adv, mask, traj, cfg)
    assert loss_with_ref.item() == loss_without.item()
    assert stats.loss_kl.item() == pytest.approx(math.exp(-0.5) + 0.5 - 1, rel=1e-5)  # k3 with ref - logp = -0.5


@pytest.mark.parametrize("agg", ["token_mean", "turn_traj_mean"])
@pytest.mark.parametrize("smoothing", ["hinge", "indicator", "off"])
@pytest.mark.parametrize("kl_kind", ["k1", "k3"])
def test_epo_loss_matches_naive(agg, smoothing, kl_kind):
    logp, old, adv, entropy, mask, traj = random_batch(6)
    ref = logp + 0.3
    cfg = EPOLossConfig(
        clip_low=0.2,
        clip_high=0.28,
        dual_clip=3.0,
        kl_coef=0.05,
        kl_kind=kl_kind,
        agg=agg,
        smoothing=smoothing,
        kappa_l=0.3,
        kappa_r=1.4,
        alpha=0.2,
    )
    h_ref, beta = 1.6, 1.4
    loss, stats = epo_loss(
        logp, old, entropy, adv, mask, traj, cfg, entropy_coef=0.01, h_ref=h_ref, beta=beta, ref_logprobs=ref
    )
    pg = naive_agg(naive_ppo(logp, old, adv, mask, 0.2, 0.28, 3.0)[0], mask, agg, traj)
    ent = naive_agg(entropy, mask, agg, traj)
    smooth = 0.0
    if smoothing != "off":
        smooth = naive_agg(naive_smooth(entropy, [h_ref] * 7, 0.3, 1.4, 0.2, smoothing), mask, agg, traj)
    kl = naive_agg(naive_kl(logp, ref, kl_kind), mask, agg, traj)
    assert loss.item() == pytest.approx(pg - 0.01 * (ent - beta * smooth) + 0.05 * kl, rel=1e-5)
    assert stats.loss_smooth.item() == pytest.approx(smooth, rel=1e-5)
    assert (stats.loss_smooth.item() > 0) == (smoothing != "off")
    inside = [0.3 * h_ref <= entropy[b, t].item() <= 1.4 * h_ref for b in range(7) for t in range(9) if mask[b, t]]
    assert stats.in_corridor_frac.item() == pytest.approx(sum(inside) / len(inside))
    _, clipped = naive_ppo(logp, old, adv, mask, 0.2, 0.28, 3.0)
    assert stats.clip_frac.item() == pytest.approx(clipped.sum().item() / mask.sum().item())
    assert all(not value.requires_grad for value in stats)


def test_ratio_one_gives_no_clipping_and_minus_mean_advantage():
    logp, _, adv, entropy, mask, traj = random_batch(7)
    for agg in ("token_mean", "turn_traj_mean"):
        _, stats = epo_loss(logp, logp.clone(), entropy, adv, mask, traj, EPOLossConfig(agg=agg), entropy_coef=0.0)
        assert stats.clip_frac.item() == 0.0
        expected = -naive_agg(adv.unsqueeze(1).expand_as(logp), mask, agg, traj)
        assert stats.loss_pg.item() == pytest.approx(expected, rel=1e-6)


def test_total_loss_gradient_wrt_entropy_pushes_toward_corridor():
    """d loss / dH = -lambda * w * (1 - beta*alpha) above, -lambda * w * (1 + beta*alpha) below, -lambda * w inside."""
    lam, beta, alpha = 0.01, 1.5, 0.1
    entropy = torch.tensor([[0.1, 1.0, 5.0, 7.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0]])
    logp = torch.zeros(1, 4)
    cfg = EPOLossConfig(kappa_l=0.5, kappa_r=2.0, alpha=alpha)
    advantages, traj = torch.tensor([1.0]), torch.tensor([0])
    loss, _ = epo_loss(logp, logp, entropy, advantages, mask, traj, cfg, entropy_coef=lam, h_ref=1.0, beta=beta)
    loss.backward()
    w = 1 / 3
    expected = torch.tensor([[-lam * w * (1 + beta * alpha), -lam * w, -lam * w * (1 - beta * alpha), 0.0]])
    torch.testing.assert_close(entropy.grad, expected)


def test_indicator_has_entropy_bonus_gradient_only():
    logp, old, adv, entropy, mask, traj = random_batch(8)
    grads, values = {}, {}
    for smoothing in ("indicator", "off"):
        h = entropy.clone().requires_grad_(True)
        cfg = EPOLossConfig(smoothing=smoothing, kappa_l=0.5, kappa_r=1.2, alpha=0.1, agg="token_mean")
        loss, _ = epo_loss(logp, old, h, adv, mask, traj, cfg, entropy_coef=0.01, h_ref=1.5, beta=2.0)
        loss.backward()
        grads[smoothing], values[smoothing] = h.grad, loss.item()
    torch.testing.assert_close(grads["indicator"], grads["off"])
    assert torch.allclose(grads["off"][mask], torch.tensor(-0.01 / mask.sum().item()))
    assert values["indicator"] > values["off"]  # + lambda * beta * L_smooth > 0 shifts the value only


def test_no_reference_means_no_smoothing():
    logp, old, adv, entropy, mask, traj = random_batch(9)
    cfg = EPOLossConfig(alpha=0.2, kappa_r=0.1)  # nearly every token is above the corridor
    loss_none, stats = epo_loss(logp, old, entropy, adv, mask, traj, cfg, entropy_coef=0.01, h_ref=None, beta=2.0)
    assert stats.loss_smooth.item() == 0.0 and stats.in_corridor_frac.item() == 1.0
    off = EPOLossConfig(smoothing="off")
    loss_off, _ = epo_loss(logp, old, entropy, adv, mask, traj, off, entropy_coef=0.01)
    assert loss_none.item() == pytest.approx(loss_off.item())
    loss_ref, stats_ref = epo_loss(logp, old, entropy, adv, mask, traj, cfg, entropy_coef=0.01, h_ref=1.0, beta=2.0)
    assert stats_ref.loss_smooth.item() > 0 and loss_ref.item() > loss_none.item()


def test_kl_coef_needs_reference_logprobs():
    logp, old, adv, entropy, mask, traj = random_batch(10)
    with pytest.raises(ValueError, match="ref_logprobs"):
        epo_loss(logp, old, entropy, adv, mask, traj, EPOLossConfig(kl_coef=0.01))


def test_empty_mask_gives_finite_zero_loss():
    logp, old, adv, entropy, _, traj = random_batch(11)
    mask = torch.zeros_like(logp, dtype=torch.bool)
    for agg in ("token_mean", "turn_traj_mean"):
        loss, stats = epo_loss(logp, old, entropy, adv, mask, traj, EPOLossConfig(agg=agg), h_ref=1.0)
        assert loss.item() == 0.0 and all(torch.isfinite(value) for value in stats)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip_low": 0.0}, "clip_low"),
        ({"clip_high": 1.0}, "clip_high"),
        ({"dual_clip": 1.0}, "dual_clip"),
        ({"kl_coef": -1.0}, "kl_coef"),
        ({"kl_kind": "k4"}, "kl_kind"),
        ({"agg": "seq_mean"}, "agg"),
        ({"smoothing": "relu"}, "smoothing"),
        ({"kappa_l": 2.5, "kappa_r": 2.0}, "kappa_l <= kappa_r"),
        ({"kappa_l": -0.1}, "kappa_l"),
        ({"alpha": -0.1}, "alpha"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EPOLossConfig(**kwargs)


def test_config_warns_on_assumption_a4():
    with pytest.warns(UserWarning, match="A.4"):
        EPOLossConfig(alpha=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither may warn
        EPOLossConfig(alpha=0.5, smoothing="indicator")  # no gradient: the assumption does not apply
        EPOLossConfig(dual_clip=None, alpha=0.49)
