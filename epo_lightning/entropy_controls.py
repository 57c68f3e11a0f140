"""Entropy-control baselines from the related work, per token on response tokens (docs/algorithm.md, section 6).

- Clip-Cov and KL-Cov (Cui et al., arXiv 2505.22617; verl ``clip_cov`` / ``kl_cov`` policy losses): entropy change
  is driven by ``Cov(log pi, A)``, so the tokens with the largest covariance are detached (Clip-Cov, a random few
  within ``(lb, ub)``) or pulled back by a ``|log r|`` penalty (KL-Cov, the top fraction).
- Entropy Ratio Clipping (Su et al., arXiv 2512.05591): tokens whose entropy moved too far from the rollout policy's,
  ``H / H_old`` outside ``(low, high)``, get no gradient.
- Entropy-based advantage shaping (Cheng et al., arXiv 2506.14758): ``A' = A + min(alpha * sg(H), |A| / kappa)``.

Each is a small function over ``[B, T]`` tensors that ``epo_loss`` composes with the PPO clip loss and EPO's terms.
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_covariance(logprobs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """``(A_i - mean A) * (log pi_i - mean log pi)`` per token, means over the masked tokens (detached, ``[B, T]``)."""
    mask = mask.to(logprobs.dtype)
    count = mask.sum().clamp_min(1.0)
    logprobs, advantages = logprobs.detach(), advantages.detach()
    mean_logprob = (logprobs * mask).sum() / count
    mean_advantage = (advantages * mask).sum() / count
    return (advantages - mean_advantage) * (logprobs - mean_logprob)


def clip_cov_selection(
    covariance: Tensor,
    mask: Tensor,
    clipped: Tensor,
    ratio: float,
    lower: float,
    upper: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Clip-Cov's tokens to detach, as verl's ``compute_policy_loss_clip_cov``.

    ``max(1, floor(ratio * N))`` tokens are drawn uniformly among the unclipped response tokens with
    ``lower < Cov < upper`` (all of them if fewer).

    Args:
        covariance: ``[B, T]`` from ``token_covariance``.
        mask: ``[B, T]`` response mask.
        clipped: ``[B, T]`` bool, tokens PPO already clipped (excluded).
        ratio: fraction of the response tokens to detach (verl 2e-4).
        lower: lower covariance bound (verl 1.0).
        upper: upper covariance bound (verl 5.0).
        generator: the random source of the draw.

    Returns:
        ``[B, T]`` bool, True on the selected tokens.
    """
    valid = mask.bool()
    candidates = (valid & ~clipped & (covariance > lower) & (covariance < upper)).flatten().nonzero().squeeze(-1)
    count = max(int(ratio * int(valid.sum())), 1)
    order = torch.randperm(candidates.numel(), generator=generator, device=generator.device if generator else "cpu")
    chosen = candidates[order.to(candidates.device)[:count]]
    selected = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
    selected[chosen] = True
    return selected.view(mask.shape)


def kl_cov_selection(covariance: Tensor, mask: Tensor, ratio: float) -> Tensor:
    """KL-Cov's tokens: the ``max(1, floor(ratio * N))`` response tokens of largest covariance (verl ``kl_cov``).

    Returns:
        ``[B, T]`` bool, True on the selected tokens.
    """
    valid = mask.bool().flatten()
    positions = valid.nonzero().squeeze(-1)
    selected = torch.zeros_like(valid)
    if positions.numel():
        count = max(1, int(positions.numel() * ratio))
        selected[positions[covariance.flatten()[positions].topk(count).indices]] = True
    return selected.view(mask.shape)


def entropy_ratio_outside(entropy: Tensor, old_entropy: Tensor, low: float, high: float) -> Tensor:
    """ERC's test: ``rho = (H + 1e-8) / (H_old + 1e-8)`` outside the open interval ``(low, high)`` (``[B, T]`` bool)."""
    ratio = (entropy.detach() + 1e-8) / (old_entropy + 1e-8)
    return (ratio <= low) | (ratio >= high)


def entropy_shaped_advantages(advantages: Tensor, entropy: Tensor, alpha: float, kappa: float) -> Tensor:
    """``A' = A + min(alpha * sg(H), |A| / kappa)`` per token (Cheng et al. 2025).

    Entropy acts as a bounded intrinsic bonus that never flips the sign of a negative advantage (kappa > 1) and
    carries no gradient of its own.
    """
    return advantages + torch.minimum(alpha * entropy.detach(), advantages.abs() / kappa)
