"""Episodes to turn rows, and rows to padded ``TurnBatch`` micro-batches (paper Eq. 1: the sample unit is a turn)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch

from epo_lightning.types import Episode, TurnBatch

#: What makes two turns of a group one anchor state (GiGPO): the same observation (the reference's key), or the same
#: observation and the same admissible actions (feedback such as "Nothing happens." then no longer joins states).
AnchorState = Literal["observation", "observation_and_actions"]
ANCHOR_STATES: tuple[str, ...] = get_args(AnchorState)


@dataclass
class TurnRow:
    """One training row: a turn's prompt and response ids and what every advantage estimator needs of it.

    Attributes:
        prompt_ids: the prompt the turn saw.
        response_ids: the tokens it generated.
        score: the row reward, ``reward_scale * episode_return`` minus the turn's invalid-action penalty.
        group_id: the task group (rows of episodes started from the same task).
        traj_id: the episode.
        turn_index: position of the turn in its episode.
        step_reward: this turn's own reward, ``reward_scale * r_t`` minus its invalid penalty (GiGPO's step level).
        anchor_id: the same id for rows of one group that saw the same state (GiGPO's anchor states, ``AnchorState``).
        rollout_logprobs: the rollout engine's log-probs of ``response_ids``, when it reports them.
        rollout_entropy: the entropy of each of ``response_ids``' distributions, when the engine reports it.
        scored: what the policy's scoring said of the row (``TurnBatch`` field name -> values at every position of
            prompt + response): pi_old's log-probs and entropy, the reference's log-probs, the critic's values.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    score: float
    group_id: int
    traj_id: int
    turn_index: int
    step_reward: float
    anchor_id: int
    rollout_logprobs: list[float] | None = None
    rollout_entropy: list[float] | None = None
    scored: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        """Prompt plus response tokens: the row's length in a micro-batch."""
        return len(self.prompt_ids) + len(self.response_ids)


def episodes_to_rows(
    episodes: Sequence[Episode],
    reward_scale: float,
    invalid_penalty: float,
    anchor_state: AnchorState = "observation",
    penalize_inadmissible: bool = True,
) -> list[TurnRow]:
    """Every turn of every error-free episode becomes a row scored with its episode's return.

    score = reward_scale * episode_return - invalid_penalty * [turn invalid]   (the EPO code's row reward)
    A turn is invalid when its response did not parse, and with ``penalize_inadmissible`` also when the environment
    did not accept its action (the EPO code penalizes only unparsable responses).
    Rows with an empty response (nothing to train) are skipped; environment-error episodes are dropped. Rows of one
    group whose turn saw the same state (``anchor_state``) share an ``anchor_id`` (GiGPO's anchor-state groups).
    """
    if anchor_state not in ANCHOR_STATES:
        raise ValueError(f"anchor_state must be one of {ANCHOR_STATES}, got {anchor_state!r}.")
    rows = []
    anchors: dict[tuple[int, str, str], int] = {}
    for traj_id, episode in enumerate(episodes):
        if episode.env_error:
            continue
        episode_score = reward_scale * episode.episode_return
        for turn in episode.turns:
            if not turn.response_ids:
                continue
            penalty = 0.0 if (turn.valid if penalize_inadmissible else turn.parsed) else invalid_penalty
            actions = turn.actions_digest if anchor_state == "observation_and_actions" else ""
            anchor = anchors.setdefault((episode.group_id, turn.observation, actions), len(anchors))
            rows.append(
                TurnRow(
                    prompt_ids=turn.prompt_ids,
                    response_ids=turn.response_ids,
                    score=episode_score - penalty,
                    group_id=episode.group_id,
                    traj_id=traj_id,
                    turn_index=turn.turn_index,
                    step_reward=reward_scale * turn.reward - penalty,
                    anchor_id=anchor,
                    rollout_logprobs=turn.response_logprobs,
                    rollout_entropy=turn.response_entropies,
                )
            )
    return rows


def row_key(row: TurnRow) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """What makes two rows identical to a model: the same prompt ids and the same response ids."""
    return tuple(row.prompt_ids), tuple(row.response_ids)


def group_identical(rows: Sequence[TurnRow]) -> list[list[TurnRow]]:
    """The rows, with identical ones (``row_key``) gathered into one list, in order of first appearance.

    A group whose policy is sure of its move plays it in many of its episodes: in the quickstart about half of an RL
    step's rows repeat another row, and within one optimizer update about a tenth (docs/results/train_step.md).
    """
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[TurnRow]] = {}
    for row in rows:
        groups.setdefault(row_key(row), []).append(row)
    return list(groups.values())


def filler_row(pad_id: int, index: int, scored_fields: Sequence[str] = ()) -> TurnRow:
    """A row with no response token, for a micro-batch a rank has no rows left for (``datamodules.update_plan``).

    It is trained on with weight 0 and is its own group and trajectory (negative ids never collide with real ones),
    so it adds nothing to any advantage, metric or gradient; it only lets the rank join the update's collectives.
    ``scored_fields`` are given zeros, as the step's scored rows have them.
    """
    row = TurnRow([pad_id], [], 0.0, -1 - index, -1 - index, 0, 0.0, -1 - index)
    row.scored = {name: torch.zeros(1) for name in scored_fields}
    return row


def collate_rows(rows: Sequence[TurnRow], pad_id: int) -> TurnBatch:
    """Right-pad rows into a ``TurnBatch`` whose ``input_ids`` are exactly prompt + generated response ids.

    Identical rows are marked (``TurnBatch.distinct_rows``), so that a model runs once per distinct row.
    """
    width = max(len(r.prompt_ids) + len(r.response_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.float32)
    reported = {
        name: torch.zeros((len(rows), width), dtype=torch.float32)
        for name in ("rollout_logprobs", "rollout_entropy")
        if any(getattr(row, name) is not None for row in rows)
    }
    first: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    distinct_rows, distinct_index = [], []
    for b, row in enumerate(rows):
        distinct_index.append(first.setdefault(row_key(row), len(first)))
        if distinct_index[-1] == len(distinct_rows):
            distinct_rows.append(b)
    distinct = {}
    if len(distinct_rows) < len(rows):
        distinct = {"distinct_rows": torch.tensor(distinct_rows), "distinct_index": torch.tensor(distinct_index)}
    scored = {name: torch.zeros((len(rows), width), dtype=torch.float32) for row in rows for name in row.scored}
    for b, row in enumerate(rows):
        n_prompt, n_total = len(row.prompt_ids), len(row.prompt_ids) + len(row.response_ids)
        input_ids[b, :n_total] = torch.tensor(row.prompt_ids + row.response_ids)
        attention_mask[b, :n_total] = 1
        response_mask[b, n_prompt:n_total] = 1.0
        for name, values in reported.items():
            if getattr(row, name):
                values[b, n_prompt:n_total] = torch.tensor(getattr(row, name))
        for name, values in row.scored.items():
            scored[name][b, :n_total] = values
    return TurnBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        turn_index=torch.tensor([r.turn_index for r in rows]),
        traj_index=torch.tensor([r.traj_id for r in rows]),
        group_index=torch.tensor([r.group_id for r in rows]),
        anchor_index=torch.tensor([r.anchor_id for r in rows]),
        scores=torch.tensor([r.score for r in rows], dtype=torch.float32),
        step_rewards=torch.tensor([r.step_reward for r in rows], dtype=torch.float32),
        **reported,
        **scored,
        **distinct,
    )
