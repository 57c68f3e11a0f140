"""The rollout engine slot (``model.init_args.rollout_engine``): what samples the responses of every turn.

An engine takes prompt token ids and returns the sampled ids (``Generation``), drawn from the full softmax of the
policy's logits at the given temperature: the distribution training scores (docs/algorithm.md 8). Two engines ship:

- ``HFEngine`` (the default): Hugging Face ``generate`` on the trained model itself. It is the reference: nothing to
  keep in sync, and the PPO ratio of the first update starts at 1 (up to float rounding). With
  ``report_logprobs: true`` it also reports each sampled token's log-prob and entropy, which
  ``model.init_args.old_logprobs: engine`` trains with instead of scoring the rows again.
- ``epo_lightning.vllm_engine.VLLMEngine``: an in-process vLLM engine, much faster on GPUs, holding its own copy of
  the weights. The module marks it stale after every optimizer update and it reloads the weights before the next
  rollout.

A new engine subclasses ``RolloutEngine``; the YAML names it by ``class_path``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedTokenizerBase

from epo_lightning.policy import generate_responses
from epo_lightning.sampled_token_scores import SampledTokenScores
from epo_lightning.types import Generation


class RolloutEngine(ABC):
    """Samples responses from the policy; ``EPOModule`` calls ``load_weights`` before a rollout after any update."""

    #: The engine returns its own log-probs of the sampled tokens (``Generation.logprobs``). The module then logs the
    #: engine-versus-trainer gap (``rollout/logprob_gap``) and can correct it (``model.rollout_is_cap``).
    reports_logprobs: bool = False
    #: The engine also returns the entropy of each sampled token's distribution (``Generation.entropies``): with its
    #: log-probs, all that ``model.init_args.old_logprobs: engine`` needs of the rollout policy.
    reports_entropy: bool = False
    #: The engine runs the trained model itself (``HFEngine``): under FSDP2 the policy is then held gathered through a
    #: whole collection. An engine with its own copy of the weights (``VLLMEngine``) samples while the policy stays
    #: sharded; it is gathered only while ``load_weights`` copies it.
    samples_with_policy: bool = True
    #: The longest prompt plus response the engine accepts, or None for the policy's own context length.
    max_model_len: int | None = None

    @abstractmethod
    def generate(
        self,
        policy: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[Sequence[int]],
        temperature: float,
        max_new_tokens: int,
    ) -> Generation:
        """Sample one response per prompt from ``softmax(logits / temperature)`` (greedy at temperature 0).

        Args:
            policy: the trained policy (a Hugging Face causal LM, possibly with LoRA adapters), with full weights.
            tokenizer: its tokenizer.
            prompts: the prompts' token ids.
            temperature: the sampling temperature; 0 is greedy decoding (evaluation only).
            max_new_tokens: the response budget.
        """

    def check_world_size(self, world_size: int) -> None:
        """Refuse settings that cannot run on ``world_size`` processes; called at setup, before the policy is built."""
        return None  # an engine that samples with the trained model runs wherever it does

    @abstractmethod
    def load_weights(self, policy: nn.Module) -> None:
        """Make the engine sample from ``policy``'s current weights (called with the full, unsharded weights).

        Called at the start of a collection after any update, on every rank at once (whether or not the rank will
        sample anything), so an engine may start itself here.
        """


class HFEngine(RolloutEngine):
    """Hugging Face ``generate`` on the trained model: one left-padded batch per turn with a KV cache.

    Args:
        report_logprobs: also record each sampled token's log-prob and entropy while decoding
            (``SampledTokenScores``: one log-softmax of the vocabulary per generated token). Needed by
            ``old_logprobs: engine``; on its own it logs ``rollout/logprob_gap``, the decoding-versus-scoring
            difference (float rounding only, for this engine).
    """

    def __init__(self, report_logprobs: bool = False) -> None:
        self.reports_logprobs = self.reports_entropy = report_logprobs

    def generate(
        self,
        policy: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[Sequence[int]],
        temperature: float,
        max_new_tokens: int,
    ) -> Generation:
        """Sample with ``policy.generate`` (``epo_lightning.policy.generate_responses``).

        Greedy decoding (evaluation only) reports no log-probs.
        """
        scores = SampledTokenScores(temperature) if self.reports_logprobs and temperature > 0 else None
        ids = generate_responses(policy, tokenizer, prompts, temperature, max_new_tokens, logits_processor=scores)
        if scores is None:
            return Generation(ids)
        return Generation(ids, *scores.per_response(ids))

    def load_weights(self, policy: nn.Module) -> None:
        """Nothing to load: the engine samples from the trained model itself."""
