"""What the policy module and the rollout DataModule need of each other, written down as Protocols.

``EPOModule`` and ``RolloutDataModule`` satisfy them; a replacement for either (a new algorithm, a new data source)
implements the matching Protocol. The direction of every call (docs/architecture.md):

- rollouts call the policy: ``RolloutPolicy`` (sample) and ``TrainingPolicy`` (score the rows, set advantages and
  update weights, over one RL step);
- the policy reads the DataModule: ``RolloutSource`` (group size, what the last collection counted, transcripts,
  and the states and words the tiny preset is built from);
- callbacks set the module's training controls (``entropy_reference``, ``beta``, ``entropy_coef``) and declare which
  in a ``controls`` tuple: at most one callback may set each (``check_one_owner_per_control``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import torch

from epo_lightning.types import Generation, TurnBatch


class RolloutPolicy(Protocol):
    """What collecting episodes needs from a policy."""

    tokenizer: Any
    #: the longest prompt, in tokens, that leaves room for a whole response (None: no known limit)
    prompt_token_limit: int | None

    def generate(self, prompts: Sequence[Sequence[int]], evaluation: bool = False) -> Generation:
        """Sample one response (token ids, and the engine's log-probs if it reports them) per prompt."""


class TrainingPolicy(RolloutPolicy, Protocol):
    """What turning a collection into training micro-batches needs from the policy (a ``LightningModule``)."""

    device: torch.device
    training: bool

    def train(self, mode: bool = True) -> Any:
        """Training mode (``nn.Module.train``)."""

    def eval(self) -> Any:
        """Evaluation mode (``nn.Module.eval``)."""

    def sampling(self) -> AbstractContextManager[None]:
        """Held around a whole collection (every turn's ``generate``), the same number of times on every rank.

        Entered on every rank at once: it may run collectives (gather a sharded policy, give the engine new weights).
        """

    def score_logprobs(self, batch: TurnBatch) -> TurnBatch:
        """Fill the rollout policy's log-probs and entropy (and the reference's and the critic's values).

        Called once per RL step on micro-batches of the step's distinct rows, the same number on every rank; every
        copy of a row trains with what its scoring filled (``epo_lightning.types.SCORED_FIELDS``).
        """

    def assign_advantages(self, batches: Sequence[TurnBatch]) -> None:
        """Set the advantages of one RL step's scored micro-batches, over all of them (and all ranks)."""

    def assign_loss_weights(self, updates: Sequence[Sequence[TurnBatch]]) -> None:
        """Set per-token loss weights over each optimizer update (a list of micro-batches) of the step."""


@runtime_checkable
class RolloutSource(Protocol):
    """What the policy module reads from its DataModule."""

    group_size: int
    rollout_stats: dict[str, float]
    transcripts: list[str]
    eval_transcripts: dict[str, list[str]]

    def format_prior_examples(self, num_states: int, seed: int) -> list[tuple[str, list[str]]]:
        """Prompts of states reached by play and their admissible actions (the tiny preset's format prior)."""

    def vocabulary(self, examples: Sequence[tuple[str, Sequence[str]]] = ()) -> tuple[str, ...]:
        """Every word the environment and the prompts can contain (the tiny preset's tokenizer)."""


def check_one_owner_per_control(callbacks: Iterable[Any]) -> None:
    """Refuse two callbacks that declare the same module attribute in their ``controls`` (one would silently win).

    For example a beta callback added to ``trainer.callbacks`` while the CLI's ``phase:`` slot keeps its default.
    """
    owners: dict[str, Any] = {}
    for callback in callbacks:
        for attribute in getattr(callback, "controls", ()):
            if attribute in owners:
                raise ValueError(
                    f"{type(owners[attribute]).__name__} and {type(callback).__name__} both set "
                    f"pl_module.{attribute}: keep one (the CLI's `entropy_history:` and `phase:` slots hold the "
                    "defaults; replace a slot's class_path, or set it to null, instead of adding a second one)."
                )
            owners[attribute] = callback
