"""The EPO objective as pure tensor math (no Lightning): paper Eq. 1, 2, 4 and 6 (docs/algorithm.md).

Shapes: B rows (one row = one turn of one trajectory), T token positions. ``mask`` ``[B, T]`` is 1 on the response
tokens that are trained on; ``traj_index`` ``[B]`` is shared by the rows of one trajectory. Every per-token function
returns ``[B, T]`` and every aggregate is a scalar.

The minimized loss is paper Eq. 6 plus the KL term the released code adds::

    loss = agg(pg) - lambda * (agg(H) - beta_k * agg(alpha * P)) + c_kl * agg(KL)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import torch
from torch import Tensor

from epo_lightning.entropy_controls import (
    clip_cov_selection,
    entropy_ratio_outside,
    entropy_shaped_advantages,
    kl_cov_selection,
    token_covariance,
)

AggMode = Literal["token_mean", "turn_traj_mean"]
PolicyLossMode = Literal["vanilla", "clip_cov", "kl_cov"]
KLKind = Literal["k1", "k2", "k3"]
SmoothingMode = Literal["hinge", "indicator"]

#: Bound on the log-ratio before ``exp`` (as verl does), so a far-off token cannot overflow to inf and NaN the backward.
_LOG_RATIO_BOUND = 20.0
#: verl clamps the low-variance (k3) KL estimate to this range.
_K3_BOUND = 10.0


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the positions where ``mask`` is nonzero.

    Args:
        values: any shape.
        mask: same shape as ``values`` (bool or float, 1 on the positions to average).

    Returns:
        A scalar; 0 (not NaN) when the mask is empty.
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def aggregate(values: Tensor, mask: Tensor, mode: AggMode, traj_index: Tensor | None = None) -> Tensor:
    """Aggregate per-token values into a scalar loss term.

    ``token_mean`` is verl's "token-mean", used by the released code for every term (docs/algorithm.md 2): a flat
    masked mean over all response tokens, so long turns and long trajectories weigh more. ``turn_traj_mean`` is the
    paper's nested mean of Eq. 2 (also used for L_smooth, Eq. 4): the mean over the tokens of each turn, then over the
    turns of each trajectory, then over trajectories. Rows without response tokens do not count as turns, and
    trajectories without such rows do not count as trajectories.

    Args:
        values: ``[B, T]`` per-token values.
        mask: ``[B, T]`` response mask (bool or float).
        mode: ``"token_mean"`` or ``"turn_traj_mean"``.
        traj_index: ``[B]`` long trajectory ids (any integers); required for ``turn_traj_mean``.

    Returns:
        A scalar; 0 when there is no response token.
    """
    if mode == "token_mean":
        return masked_mean(values, mask)
    if mode != "turn_traj_mean":
        raise ValueError(f"aggregation mode must be one of {get_args(AggMode)}, got {mode!r}.")
    if traj_index is None:
        raise ValueError("aggregation 'turn_traj_mean' needs traj_index ([B] trajectory id of each row).")
    mask = mask.to(values.dtype)
    row_tokens = mask.sum(dim=1)
    row_valid = (row_tokens > 0).to(values.dtype)
    row_mean = (values * mask).sum(dim=1) / row_tokens.clamp_min(1.0)  # 0 on rows without response tokens
    ids, traj = torch.unique(traj_index, return_inverse=True)
    n_traj = ids.numel()
    traj_sum = values.new_zeros(n_traj).index_add(0, traj, row_mean)
    traj_turns = values.new_zeros(n_traj).index_add(0, traj, row_valid)
    traj_valid = (traj_turns > 0).to(values.dtype)
    traj_mean = traj_sum / traj_turns.clamp_min(1.0)
    return traj_mean.sum() / traj_valid.sum().clamp_min(1.0)  # empty trajectories have traj_mean 0


def _per_token(advantages: Tensor, like: Tensor) -> Tensor:
    """Broadcast per-row advantages ``[B]`` to ``[B, T]`` (``[B, T]`` passes through)."""
    return advantages.unsqueeze(-1) if advantages.dim() == like.dim() - 1 else advantages


def ppo_clip_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
) -> tuple[Tensor, Tensor]:
    """Token-level (dual-)clipped PPO loss, the negative of the multi-turn surrogate L_MT of paper Eq. 1.

    With ``r = exp(logprobs - old_logprobs)`` (log-ratio clamped to [-20, 20] as verl does)::

        pg = max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high))
        pg = min(pg, -A * dual_clip)    where A < 0   (verl ``compute_policy_loss``, clip_ratio_c)

    Args:
        logprobs: ``[B, T]`` log-probs under the current policy (with grad).
        old_logprobs: ``[B, T]`` log-probs under the rollout policy.
        advantages: ``[B]`` per-row or ``[B, T]`` per-token advantages.
        mask: ``[B, T]`` response mask.
        clip_low: epsilon below 1.
        clip_high: epsilon above 1 (Clip-Higher when larger than ``clip_low``).
        dual_clip: the dual-clip constant c > 1 for negative advantages; ``None`` disables it.

    Returns:
        ``(loss, clipped)``: the per-token loss ``[B, T]`` (0 off the mask) and a bool ``[B, T]`` that is True on the
        response tokens whose loss comes from a clipped branch (the standard clip, as verl's ``pg_clipfrac``, or
        the dual clip, verl's ``pg_clipfrac_lower``), i.e. the tokens that get no policy gradient.
    """
    mask = mask.bool()
    advantages = _per_token(advantages, logprobs).to(logprobs.dtype)
    ratio = torch.exp((logprobs - old_logprobs).clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND))
    unclipped = -advantages * ratio
    clipped_loss = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped_loss)
    clipped = clipped_loss > unclipped
    if dual_clip is not None:
        bound = -advantages * dual_clip
        dual = (advantages < 0) & (loss > bound)
        loss = torch.where(dual, bound, loss)
        clipped = clipped | dual
    return torch.where(mask, loss, torch.zeros_like(loss)), clipped & mask


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: KLKind = "k3") -> Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) on sampled tokens (docs/algorithm.md 5, verl ``kl_penalty``).

    - ``k1``: ``logp - ref``.
    - ``k2``: ``0.5 * (logp - ref)^2``.
    - ``k3`` (verl "low_var_kl", the released code's choice): with ``kl = ref - logp`` (clamped to [-20, 20]),
      ``exp(kl) - kl - 1``, clamped to [-10, 10].

    Args:
        logprobs: ``[B, T]`` current-policy log-probs.
        ref_logprobs: ``[B, T]`` reference-policy log-probs.
        kind: the estimator.

    Returns:
        ``[B, T]`` per-token KL estimate (not masked).
    """
    if kind == "k1":
        return logprobs - ref_logprobs
    if kind == "k2":
        return 0.5 * (logprobs - ref_logprobs).square()
    if kind == "k3":
        kl = (ref_logprobs - logprobs).clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
        return (torch.exp(kl) - kl - 1.0).clamp(-_K3_BOUND, _K3_BOUND)
    raise ValueError(f"kl kind must be one of {get_args(KLKind)}, got {kind!r}.")


def _reference(h_ref: float | Tensor, like: Tensor) -> Tensor:
    """The entropy reference as a detached tensor broadcastable to ``like`` (a 1-D ``[B]`` is taken per row)."""
    if not isinstance(h_ref, Tensor):
        return torch.tensor(float(h_ref), dtype=like.dtype, device=like.device)
    h_ref = h_ref.detach().to(dtype=like.dtype, device=like.device)
    return h_ref.unsqueeze(-1) if h_ref.dim() == 1 and like.dim() == 2 else h_ref


def smoothing_penalty(
    entropy: Tensor,
    h_ref: float | Tensor,
    kappa_l: float,
    kappa_r: float,
    alpha: float,
    mode: SmoothingMode = "hinge",
) -> Tensor:
    """Per-token entropy-smoothing penalty ``alpha * P`` around the corridor [kappa_l * h_ref, kappa_r * h_ref].

    ``hinge`` is paper v2 Eq. 4: ``alpha * (relu(kappa_l * h_ref - H) + relu(H - kappa_r * h_ref))``. Its gradient
    w.r.t. H is ``-alpha`` below the corridor, 0 inside and ``+alpha`` above (Lemma A.11).

    ``indicator`` reproduces the released code (v1 Eq. 5, token mode of ``generate_entropy_penalty``):
    ``alpha`` where H is outside the open interval (kappa_l * h_ref, kappa_r * h_ref), else 0. It is a constant with
    **no gradient**, on purpose: the released code's smoothing term shifts the loss value but never the update,
    and this mode exists to reproduce that behaviour for faithful comparisons.

    Args:
        entropy: ``[B, T]`` token entropy (with grad for ``hinge``).
        h_ref: the entropy reference, a float or a tensor broadcastable to ``[B, T]`` (``[B]`` or ``[B, 1]`` for a
            per-row, e.g. per-turn-index, reference). Always detached.
        kappa_l: lower corridor factor.
        kappa_r: upper corridor factor.
        alpha: penalty weight.
        mode: ``"hinge"`` or ``"indicator"``.

    Returns:
        ``[B, T]`` per-token ``alpha * P`` (not masked).
    """
    ref = _reference(h_ref, entropy)
    low, high = kappa_l * ref, kappa_r * ref
    if mode == "hinge":
        return alpha * (torch.relu(low - entropy) + torch.relu(entropy - high))
    if mode == "indicator":
        within = (entropy > low) & (entropy < high)  # a comparison: no gradient flows through it
        return torch.where(within, torch.zeros_like(entropy), torch.full_like(entropy, alpha))
    raise ValueError(f"smoothing mode must be one of {get_args(SmoothingMode)}, got {mode!r}.")


@dataclass(frozen=True)
class EPOLossConfig:
    """Static settings of the EPO objective (paper Eq. 6; defaults follow the released code, docs/algorithm.md).

    In YAML this is ``model.init_args.loss``. What changes during training is passed to ``epo_loss`` instead: the
    entropy coefficient lambda, the entropy reference ``H_ref`` and the phase weight ``beta_k``.

    Attributes:
        clip_low: PPO epsilon below 1, in (0, 1).
        clip_high: PPO epsilon above 1, in (0, 1); larger than ``clip_low`` gives Clip-Higher.
        dual_clip: dual-clip constant c > 1 for negative advantages (verl ``clip_ratio_c`` = 3.0); None disables.
        kl_coef: weight of the KL-to-reference term (the released code uses 0.01); 0 disables it.
        kl_kind: KL estimator, ``k1``, ``k2`` or ``k3`` (verl low_var_kl).
        agg: ``turn_traj_mean`` (paper Eq. 2: the mean over the tokens of each turn, then over the turns of each
            trajectory, then over trajectories; needs trajectory ids) or ``token_mean`` (the released code's flat
            mean over response tokens), for every term.
        smoothing: ``hinge`` (paper v2 Eq. 4), ``indicator`` (released code, zero gradient) or ``off``.
        kappa_l: lower corridor factor (0.0 in the paper's experiments).
        kappa_r: upper corridor factor (2.0 in the paper's experiments).
        alpha: smoothing penalty weight (0.05 ScienceWorld, 0.1 ALFWorld).
        policy_loss: ``vanilla`` clipped PPO, ``clip_cov`` or ``kl_cov`` (``epo_lightning.entropy_controls``).
        clip_cov_ratio: fraction of response tokens Clip-Cov detaches (verl 2e-4).
        clip_cov_lb: Clip-Cov's lower covariance bound (verl 1.0).
        clip_cov_ub: Clip-Cov's upper covariance bound (verl 5.0).
        kl_cov_ratio: fraction of response tokens KL-Cov penalizes (verl 2e-4).
        kl_cov_coef: weight of KL-Cov's ``|log r|`` penalty (verl ``ppo_kl_coef`` 1.0).
        erc_low: Entropy Ratio Clipping's lower bound on ``H / H_old`` (0.95 in its paper); None disables ERC.
        erc_high: ERC's upper bound (1.05); set both or neither.
        ea_alpha: entropy-based advantage shaping weight (0.4 in its paper); 0 disables it.
        ea_kappa: EA's cap divisor: the shaping term is at most ``|A| / kappa`` (2).
    """

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = 3.0
    kl_coef: float = 0.0
    kl_kind: KLKind = "k3"
    agg: AggMode = "turn_traj_mean"
    smoothing: Literal["hinge", "indicator", "off"] = "hinge"
    kappa_l: float = 0.0
    kappa_r: float = 2.0
    alpha: float = 0.1
    policy_loss: PolicyLossMode = "vanilla"
    clip_cov_ratio: float = 2e-4
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 2e-4
    kl_cov_coef: float = 1.0
    erc_low: float | None = None
    erc_high: float | None = None
    ea_alpha: float = 0.0
    ea_kappa: float = 2.0

    def __post_init__(self) -> None:
        for name in ("clip_low", "clip_high"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1) (the ratio is clipped to 1 -/+ it), got {value}.")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 (verl uses 3.0) or None to disable it, got {self.dual_clip}.")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0 (0 disables the KL term), got {self.kl_coef}.")
        if self.kl_kind not in get_args(KLKind):
            raise ValueError(f"kl_kind must be one of {get_args(KLKind)}, got {self.kl_kind!r}.")
        if self.agg not in get_args(AggMode):
            raise ValueError(f"agg must be one of {get_args(AggMode)}, got {self.agg!r}.")
        if self.smoothing not in ("hinge", "indicator", "off"):
            raise ValueError(f"smoothing must be 'hinge', 'indicator' or 'off', got {self.smoothing!r}.")
        if not 0.0 <= self.kappa_l <= self.kappa_r:
            raise ValueError(
                f"need 0 <= kappa_l <= kappa_r (the corridor is [kappa_l, kappa_r] * h_ref; the paper uses 0 and 2), "
                f"got kappa_l={self.kappa_l}, kappa_r={self.kappa_r}."
            )
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0 (0 disables the smoothing penalty), got {self.alpha}.")
        if self.policy_loss not in get_args(PolicyLossMode):
            raise ValueError(f"policy_loss must be one of {get_args(PolicyLossMode)}, got {self.policy_loss!r}.")
        if not (0.0 < self.clip_cov_ratio <= 1.0 and 0.0 < self.kl_cov_ratio <= 1.0):
            raise ValueError(
                f"clip_cov_ratio and kl_cov_ratio are token fractions in (0, 1] (verl uses 2e-4), got "
                f"{self.clip_cov_ratio} and {self.kl_cov_ratio}."
            )
        if self.clip_cov_lb >= self.clip_cov_ub:
            raise ValueError(
                f"need clip_cov_lb < clip_cov_ub (verl: 1 and 5), got {self.clip_cov_lb}, {self.clip_cov_ub}."
            )
        if (self.erc_low is None) != (self.erc_high is None):
            raise ValueError("set both erc_low and erc_high (e.g. 0.95 and 1.05) to enable ERC, or neither.")
        if self.erc_low is not None and not 0.0 < self.erc_low < 1.0 < self.erc_high:
            raise ValueError(f"ERC needs 0 < erc_low < 1 < erc_high, got {self.erc_low} and {self.erc_high}.")
        if self.ea_alpha < 0 or self.ea_kappa <= 1.0:
            raise ValueError(
                f"need ea_alpha >= 0 (0 disables EA) and ea_kappa > 1 (so the bonus never flips a negative advantage), "
                f"got {self.ea_alpha} and {self.ea_kappa}."
            )
        if self.smoothing == "hinge" and self.alpha * 2.0 >= 1.0:
            warnings.warn(
                f"alpha={self.alpha} violates Assumption A.4 (alpha * beta_max < 1 with beta_max = 2): above the "
                f"corridor the hinge cancels or reverses the entropy bonus. Use alpha < 0.5 (the paper uses 0.05-0.1).",
                UserWarning,
                stacklevel=3,
            )


class EPOStats(NamedTuple):
    """Detached scalars logged every training step.

    Attributes:
        loss_total: the minimized loss.
        loss_pg: aggregated PPO clip loss (the negative of L_MT).
        loss_entropy: aggregated token entropy L_H (Eq. 2).
        loss_smooth: aggregated smoothing term L_smooth including alpha (Eq. 4); 0 when not applied.
        loss_kl: aggregated KL-to-reference estimate; 0 without reference log-probs.
        clip_frac: fraction of response tokens whose loss comes from a clipped branch (standard or dual clip).
        approx_kl: token-mean k3 estimate of KL(pi_old || pi_theta), ``mean(r - 1 - log r)`` with ``r = p/p_old``.
        entropy_token_mean: token-mean entropy of the batch (what EntropyHistory records).
        in_corridor_frac: fraction of response tokens with ``kappa_l * h_ref <= H <= kappa_r * h_ref``; 1 without h_ref.
        cov_selected_frac: fraction of response tokens Clip-Cov detached or KL-Cov penalized; 0 with ``vanilla``.
        erc_clip_frac: fraction of response tokens ERC stopped the gradient of; 0 without ERC.
    """

    loss_total: Tensor
    loss_pg: Tensor
    loss_entropy: Tensor
    loss_smooth: Tensor
    loss_kl: Tensor
    clip_frac: Tensor
    approx_kl: Tensor
    entropy_token_mean: Tensor
    in_corridor_frac: Tensor
    cov_selected_frac: Tensor
    erc_clip_frac: Tensor


def epo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    entropy: Tensor,
    advantages: Tensor,
    mask: Tensor,
    traj_index: Tensor | None,
    cfg: EPOLossConfig,
    entropy_coef: float = 0.001,
    h_ref: float | Tensor | None = None,
    beta: float = 1.0,
    ref_logprobs: Tensor | None = None,
    old_entropy: Tensor | None = None,
    generator: torch.Generator | None = None,
    token_weights: Tensor | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, EPOStats]:
    """The EPO loss, paper Eq. 6 (minimized), plus the released code's KL term.

    ``loss = agg(pg) - entropy_coef * (agg(H) - beta * agg(alpha * P)) + kl_coef * agg(KL)``, where ``agg`` is
    ``cfg.agg`` for every term and the smoothing term is present only with ``h_ref`` and ``cfg.smoothing != "off"``.
    With ``token_weights``, ``agg(x) = sum(token_weights * x)`` instead: the weights of
    ``epo_lightning.update_weights`` make the sum over an update's micro-batches (and ranks) exactly ``cfg.agg`` over
    the whole update, and the returned loss terms are this micro-batch's share of it.

    Args:
        logprobs: ``[B, T]`` current-policy log-probs of the sampled tokens (with grad).
        old_logprobs: ``[B, T]`` rollout-policy log-probs.
        entropy: ``[B, T]`` current-policy full-vocabulary token entropy (with grad).
        advantages: ``[B]`` or ``[B, T]``.
        mask: ``[B, T]`` response mask.
        traj_index: ``[B]`` trajectory id per row (needed for ``turn_traj_mean``).
        cfg: the static settings.
        entropy_coef: lambda, the entropy-bonus weight (0.001 in every paper experiment; an adaptive-coefficient
            callback may change it between steps); 0 gives plain PPO/GRPO.
        h_ref: entropy reference from the EntropyHistory callback; None (step k = 0, or no callback) means no
            smoothing term. A float, or a tensor broadcastable to ``[B, T]`` (``[B]`` per row).
        beta: the phase weight beta_k (Eq. 5) from the PhaseScheduler callback.
        ref_logprobs: ``[B, T]`` reference-policy log-probs; required when ``cfg.kl_coef > 0``. When given with
            ``kl_coef == 0`` the KL is computed for logging only.
        old_entropy: ``[B, T]`` rollout-policy token entropy; required by ERC.
        generator: random source of Clip-Cov's token draw.
        token_weights: ``[B, T]`` per-token weights (0 off the mask) replacing ``cfg.agg`` by a weighted sum.
        is_weights: ``[B, T]`` truncated importance weights ``min(pi_old / pi_engine, cap)`` (no grad) multiplying
            the policy-gradient term per token, correcting a rollout engine whose distribution differs slightly
            from the trainer's (docs/algorithm.md 8).

    Returns:
        ``(loss, stats)``: the scalar loss with grad, and the detached logged scalars.
    """
    if entropy_coef < 0:
        raise ValueError(f"entropy_coef (lambda) must be >= 0 (0 disables the entropy bonus), got {entropy_coef}.")
    if cfg.kl_coef > 0 and ref_logprobs is None:
        raise ValueError(
            f"kl_coef={cfg.kl_coef} > 0 needs ref_logprobs (log-probs of the frozen reference policy); "
            "pass them or set kl_coef=0."
        )
    if cfg.erc_low is not None and old_entropy is None:
        raise ValueError("Entropy Ratio Clipping (erc_low/erc_high) needs old_entropy, the rollout policy's entropy.")
    mask_f = mask.to(logprobs.dtype)

    def agg(values: Tensor) -> Tensor:
        if token_weights is not None:
            return (values * token_weights).sum()
        return aggregate(values, mask_f, cfg.agg, traj_index)

    pg, clipped, cov_selected, erc_outside = _policy_gradient_loss(
        logprobs, old_logprobs, entropy, advantages, mask_f, cfg, old_entropy, generator
    )
    if is_weights is not None:
        pg = pg * is_weights.detach()
    loss_pg = agg(pg)
    loss_entropy = agg(entropy)
    loss_smooth = logprobs.new_zeros(())
    if h_ref is not None and cfg.smoothing != "off":
        loss_smooth = agg(smoothing_penalty(entropy, h_ref, cfg.kappa_l, cfg.kappa_r, cfg.alpha, cfg.smoothing))
    loss = loss_pg - entropy_coef * (loss_entropy - beta * loss_smooth)
    loss_kl = logprobs.new_zeros(())
    if ref_logprobs is not None:
        loss_kl = agg(kl_penalty(logprobs, ref_logprobs, cfg.kl_kind))
        loss = loss + cfg.kl_coef * loss_kl

    with torch.no_grad():
        log_ratio = (logprobs - old_logprobs).clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
        approx_kl = masked_mean(torch.exp(log_ratio) - 1.0 - log_ratio, mask_f)
        in_corridor = torch.ones((), dtype=logprobs.dtype, device=logprobs.device)
        if h_ref is not None:
            ref = _reference(h_ref, entropy)
            inside = (entropy >= cfg.kappa_l * ref) & (entropy <= cfg.kappa_r * ref)
            in_corridor = masked_mean(inside.to(logprobs.dtype), mask_f)
        stats = EPOStats(
            loss_total=loss.detach(),
            loss_pg=loss_pg.detach(),
            loss_entropy=loss_entropy.detach(),
            loss_smooth=loss_smooth.detach(),
            loss_kl=loss_kl.detach(),
            clip_frac=masked_mean(clipped.to(logprobs.dtype), mask_f),
            approx_kl=approx_kl,
            entropy_token_mean=masked_mean(entropy.detach(), mask_f),
            in_corridor_frac=in_corridor,
            cov_selected_frac=masked_mean(cov_selected.to(logprobs.dtype), mask_f),
            erc_clip_frac=masked_mean(erc_outside.to(logprobs.dtype), mask_f),
        )
    return loss, stats


def _policy_gradient_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    entropy: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: EPOLossConfig,
    old_entropy: Tensor | None,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-token policy-gradient loss with the configured entropy controls (docs/algorithm.md 6).

    Returns the loss ``[B, T]`` and three bool ``[B, T]`` masks: PPO-clipped, covariance-selected, ERC-stopped.
    """
    advantages = _per_token(advantages, logprobs).to(logprobs.dtype)
    if cfg.ea_alpha > 0:
        advantages = entropy_shaped_advantages(advantages, entropy, cfg.ea_alpha, cfg.ea_kappa)
    no_tokens = torch.zeros_like(mask, dtype=torch.bool)
    if cfg.policy_loss == "kl_cov":  # no ratio clipping; a |log r| pull-back on the highest-covariance tokens
        log_ratio = (logprobs - old_logprobs).clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
        selected = kl_cov_selection(token_covariance(logprobs, advantages, mask), mask, cfg.kl_cov_ratio)
        pg = -advantages * torch.exp(log_ratio) + torch.where(selected, cfg.kl_cov_coef * log_ratio.abs(), 0.0)
        pg, clipped = torch.where(mask.bool(), pg, torch.zeros_like(pg)), no_tokens
    else:
        clip = (cfg.clip_low, cfg.clip_high, cfg.dual_clip)
        pg, clipped = ppo_clip_loss(logprobs, old_logprobs, advantages, mask, *clip)
        selected = no_tokens
        if cfg.policy_loss == "clip_cov":  # detach a few random tokens of high covariance
            covariance = token_covariance(logprobs, advantages, mask)
            selected = clip_cov_selection(
                covariance, mask, clipped, cfg.clip_cov_ratio, cfg.clip_cov_lb, cfg.clip_cov_ub, generator
            )
            pg = torch.where(selected, torch.zeros_like(pg), pg)
    outside = no_tokens
    if cfg.erc_low is not None:  # stop the gradient where the entropy moved too far from the rollout policy's
        outside = entropy_ratio_outside(entropy, old_entropy, cfg.erc_low, cfg.erc_high) & mask.bool()
        pg = torch.where(outside, pg.detach(), pg)
    return pg, clipped, selected, outside
