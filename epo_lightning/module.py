"""``EPOModule``: the policy, its frozen reference, and the EPO objective wired into Lightning.

The objective itself is pure tensor math in ``epo_lightning.losses`` (paper Eq. 6):

    loss = L_pg - lambda * (L_H - beta_k * L_smooth) + c_kl * KL

This module only computes log-probs and entropy at response positions, calls the loss, and logs. The entropy
reference ``H_ref`` and the phase weight ``beta_k`` are plain attributes that callbacks set (``EntropyHistory`` and
``PhaseScheduler``); without those callbacks the module trains with ``beta = 1`` and no smoothing term.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchmetrics import MeanMetric
from typing_extensions import override

from epo_lightning.advantages import grpo_advantages
from epo_lightning.logprobs import response_logprobs_and_entropy
from epo_lightning.losses import EPOLossConfig, epo_loss
from epo_lightning.policy import generate_responses, load_policy
from epo_lightning.tiny_preset import TinyPreset, load_or_build_tiny
from epo_lightning.types import TurnBatch

VAL_PREFIX = {"val_iid": "val", "val_ood": "val_ood"}


class EPOModule(pl.LightningModule):
    """GRPO + EPO for multi-turn LLM agents (arXiv 2509.22576).

    Args:
        policy: ``"tiny"`` for the built-in CPU preset, or a Hugging Face hub id / local directory of a causal LM.
        tiny: size and format-prior budget of the ``tiny`` preset.
        dtype: parameter dtype of a pretrained policy (``float32`` on CPU; ``bfloat16`` on GPU).
        cache_dir: where the tiny preset is built once and reused.
        optimizer: optimizer factory, chosen in YAML (AdamW by default).
        lr_scheduler: optional scheduler factory, stepped every optimizer step.
        temperature: sampling temperature of training rollouts; log-probs are scored at the same temperature.
        val_temperature: sampling temperature of evaluation episodes (0.4 in the paper; 0 = greedy).
        max_new_tokens: response budget per turn.
        advantage: ``grpo`` (group mean and std, spec 1.1) or ``grpo_mean`` (mean only, no std division).
        clip_low: PPO lower clip epsilon.
        clip_high: PPO upper clip epsilon (0.28 gives DAPO's Clip-Higher).
        dual_clip: dual-clip constant c for negative advantages (None disables).
        entropy_coef: lambda, the entropy-bonus weight (0.001 in the paper).
        kl_coef: weight of the KL to the frozen initial policy (0 disables and skips the reference model).
        kl_kind: KL estimator, ``k3`` is verl's ``low_var_kl``.
        agg: ``token_mean`` (released code) or ``turn_traj_mean`` (the paper's nested mean, Eq. 2).
        smoothing: ``hinge`` (paper v2, differentiable), ``indicator`` (released code, no gradient) or ``off``.
        kappa_l: lower corridor factor on H_ref.
        kappa_r: upper corridor factor on H_ref.
        alpha: corridor penalty weight (0.1 ALFWorld, 0.05 ScienceWorld).
        logprob_chunk_size: response positions per vocabulary projection chunk.
        max_logged_turns: per-turn entropy is logged as ``entropy/turn_<t>`` for t below this.
    """

    def __init__(
        self,
        policy: str = "tiny",
        tiny: TinyPreset | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        cache_dir: str = "~/.cache/epo_lightning",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        temperature: float = 1.0,
        val_temperature: float = 0.4,
        max_new_tokens: int = 8,
        advantage: Literal["grpo", "grpo_mean"] = "grpo",
        clip_low: float = 0.2,
        clip_high: float = 0.2,
        dual_clip: float | None = 3.0,
        entropy_coef: float = 0.001,
        kl_coef: float = 0.0,
        kl_kind: Literal["k1", "k2", "k3"] = "k3",
        agg: Literal["token_mean", "turn_traj_mean"] = "token_mean",
        smoothing: Literal["hinge", "indicator", "off"] = "hinge",
        kappa_l: float = 0.0,
        kappa_r: float = 2.0,
        alpha: float = 0.1,
        logprob_chunk_size: int = 1024,
        max_logged_turns: int = 16,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"model.temperature must be > 0 for sampled training rollouts, got {temperature}.")
        if val_temperature < 0 or max_new_tokens < 1:
            raise ValueError("model.val_temperature must be >= 0 and model.max_new_tokens >= 1.")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "tiny"])
        self.tiny = tiny or TinyPreset()
        self.hparams["tiny"] = asdict(self.tiny)  # plain types only: checkpoints load with weights_only=True
        self.loss_config = EPOLossConfig(
            clip_low=clip_low,
            clip_high=clip_high,
            dual_clip=dual_clip,
            entropy_coef=entropy_coef,
            kl_coef=kl_coef,
            kl_kind=kl_kind,
            agg=agg,
            smoothing=smoothing,
            kappa_l=kappa_l,
            kappa_r=kappa_r,
            alpha=alpha,
        )
        self.policy_name = policy
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.model: torch.nn.Module | None = None
        self.ref_model: torch.nn.Module | None = None
        self.tokenizer: Any = None
        # Set by callbacks (EntropyHistory, PhaseScheduler); read by training_step.
        self.entropy_reference: float | None = None
        self.beta: float = 1.0
        self.train_entropy = MeanMetric()
        self.val_success = torch.nn.ModuleDict({split: MeanMetric() for split in VAL_PREFIX})
        self.val_episode_len = torch.nn.ModuleDict({split: MeanMetric() for split in VAL_PREFIX})
        self._epoch_start = 0.0

    # ------------------------------------------------------------------ policy construction
    @override
    def setup(self, stage: str) -> None:
        if self.model is None:
            self.model, self.tokenizer = self._load_policy()
            if self.loss_config.kl_coef > 0:
                self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)

    def _load_policy(self) -> tuple[torch.nn.Module, Any]:
        if self.policy_name != "tiny":
            return load_policy(self.policy_name, self.hparams.dtype)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "format_prior_examples"):
            raise RuntimeError(
                "model.policy='tiny' builds its tokenizer and format prior from the environment: train with a "
                "RolloutDataModule (data: ...), or set model.policy to a Hugging Face model id or directory."
            )
        examples = datamodule.format_prior_examples(self.tiny.prior_states, self.tiny.seed)
        path = load_or_build_tiny(datamodule.vocabulary(examples), examples, self.tiny, Path(self.hparams.cache_dir))
        return load_policy(path, "float32")

    # ------------------------------------------------------------------ what rollouts call
    def generate(self, prompts: Sequence[Sequence[int]], evaluation: bool = False) -> list[list[int]]:
        """Sample one response per prompt (token ids) at the training or evaluation temperature."""
        temperature = self.hparams.val_temperature if evaluation else self.hparams.temperature
        return generate_responses(self.model, self.tokenizer, prompts, temperature, self.hparams.max_new_tokens)

    def compute_advantages(self, scores: Tensor, group_index: Tensor) -> Tensor:
        """Per-row advantages from per-row scores (GRPO group normalisation, spec 1.1-1.2)."""
        return grpo_advantages(scores, group_index, normalize_std=self.hparams.advantage == "grpo")

    @torch.no_grad()
    def score(self, batch: TurnBatch) -> TurnBatch:
        """Fill the rollout policy's log-probs and entropy (and the reference log-probs when KL is on)."""
        batch = batch.to(self.device)
        batch.old_logprobs, batch.old_entropy = self._logprobs(self.model, batch)
        if self.ref_model is not None:
            batch.ref_logprobs, _ = self._logprobs(self.ref_model, batch)
        return batch

    def _logprobs(self, model: torch.nn.Module, batch: TurnBatch) -> tuple[Tensor, Tensor]:
        return response_logprobs_and_entropy(
            model,
            batch.input_ids,
            batch.attention_mask,
            batch.response_mask,
            temperature=self.hparams.temperature,
            chunk_size=self.hparams.logprob_chunk_size,
        )

    # ------------------------------------------------------------------ training
    @override
    def training_step(self, batch: TurnBatch, batch_idx: int) -> Tensor:
        logprobs, entropy = self._logprobs(self.model, batch)
        loss, stats = epo_loss(
            logprobs,
            batch.old_logprobs,
            entropy,
            batch.advantages,
            batch.response_mask,
            batch.traj_index,
            self.loss_config,
            h_ref=self.entropy_reference,
            beta=self.beta,
            ref_logprobs=batch.ref_logprobs,
        )
        tokens = batch.response_mask.sum()
        self.train_entropy.update(stats.entropy_token_mean, weight=tokens)
        size = len(batch)
        log = {
            "loss/total": stats.loss_total,
            "loss/pg": stats.loss_pg,
            "loss/entropy": stats.loss_entropy,
            "loss/smooth": stats.loss_smooth,
            "loss/kl": stats.loss_kl,
            "ppo/clip_frac": stats.clip_frac,
            "ppo/approx_kl": stats.approx_kl,
            "entropy/in_corridor_frac": stats.in_corridor_frac,
            "phase/beta": self.beta,
        }
        self.log_dict(log, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        self.log("entropy/token_mean", self.train_entropy, on_step=False, on_epoch=True)
        if self.entropy_reference is not None:
            self.log("entropy/reference", float(self.entropy_reference), on_step=False, on_epoch=True, batch_size=size)
        self._log_turn_entropy(entropy.detach(), batch)
        return loss

    def _log_turn_entropy(self, entropy: Tensor, batch: TurnBatch) -> None:
        row_tokens = batch.response_mask.sum(dim=1)
        row_entropy = (entropy * batch.response_mask).sum(dim=1)
        for turn in batch.turn_index.unique().tolist():
            if turn >= self.hparams.max_logged_turns:
                continue
            rows = batch.turn_index == turn
            weight = row_tokens[rows].sum()
            self.log(
                f"entropy/turn_{turn}",
                row_entropy[rows].sum() / weight.clamp_min(1),
                on_step=False,
                on_epoch=True,
                batch_size=int(weight.item()),
                sync_dist=True,
            )

    @override
    def on_fit_start(self) -> None:
        # A validation run before fit (val_before_fit) leaves metric states created under inference mode, which the
        # in-fit validation loop (no_grad, not inference mode) cannot update in place: start from fresh states.
        for metric in [*self.val_success.values(), *self.val_episode_len.values()]:
            metric.reset()

    @override
    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        self.train_entropy.reset()
        datamodule = getattr(self.trainer, "datamodule", None)
        stats = getattr(datamodule, "rollout_stats", {})
        if stats:
            self.log_dict(stats, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)
        transcripts = getattr(datamodule, "transcripts", [])
        if transcripts and isinstance(self.logger, TensorBoardLogger) and self.trainer.is_global_zero:
            for i, text in enumerate(transcripts):
                self.logger.experiment.add_text(f"transcripts/train_{i}", text, self.current_epoch)

    @override
    def on_train_epoch_end(self) -> None:
        self.log("time/train_s", time.perf_counter() - self._epoch_start, on_step=False, on_epoch=True)

    # ------------------------------------------------------------------ evaluation
    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._log_eval(batch, prefix_map=VAL_PREFIX)

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._log_eval(batch, prefix_map={"val_iid": "test", "val_ood": "test_ood"})

    def _log_eval(self, batch: dict[str, Any], prefix_map: dict[str, str]) -> None:
        split = batch["split"]
        if batch["success"].numel() == 0:
            return
        self.val_success[split].update(batch["success"])
        self.val_episode_len[split].update(batch["episode_len"])
        prefix = prefix_map[split]
        self.log(f"{prefix}/success_rate", self.val_success[split], on_step=False, on_epoch=True)
        self.log(f"{prefix}/episode_len", self.val_episode_len[split], on_step=False, on_epoch=True)

    # ------------------------------------------------------------------ optimisation
    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.model.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"},
        }
