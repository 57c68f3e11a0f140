"""Multi-turn rollout collection: one batched generation per turn over every active environment.

For each turn: build every active episode's step-independent prompt, generate all responses in one batch, parse the
actions, step the environments, record the turns (token ids exactly as generated). An unparsable response is an
invalid action: the environment is not stepped and the turn is marked invalid. An environment that raises is an
environment error: its episode ends, is counted, and is never trained on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
from transformers import PreTrainedTokenizerBase

from datamodules.action_parser import parse_action
from datamodules.prompts import PromptBuilder
from epo_lightning.types import Episode, Turn

log = logging.getLogger(__name__)


class RolloutPolicy(Protocol):
    """What rollout collection needs from a policy (``EPOModule`` provides it)."""

    tokenizer: PreTrainedTokenizerBase

    def generate(self, prompts: Sequence[Sequence[int]], evaluation: bool = False) -> list[list[int]]:
        """Sample one response (token ids) per prompt."""


@dataclass(frozen=True)
class TaskSpec:
    """A task to play: the environment is reset with ``seed`` and ``options={"split": split}``."""

    split: str
    seed: int
    group_id: int

    @property
    def task_id(self) -> str:
        """``"<split>:<seed>"``."""
        return f"{self.split}:{self.seed}"


@dataclass(frozen=True)
class RolloutResult:
    """Episodes of one collection and how long generation and stepping took."""

    episodes: list[Episode]
    generated_tokens: int
    seconds: float


def collect_episodes(
    policy: RolloutPolicy,
    envs: Sequence[gym.Env],
    tasks: Sequence[TaskSpec],
    prompt_builder: PromptBuilder,
    max_turns: int,
    evaluation: bool = False,
    require_think: bool = False,
) -> RolloutResult:
    """Play ``tasks[i]`` in ``envs[i]`` until every episode ends or ``max_turns`` turns are taken."""
    if len(envs) != len(tasks):
        raise ValueError(f"got {len(envs)} environments for {len(tasks)} tasks; they must match one to one.")
    start = time.perf_counter()
    tokenizer = policy.tokenizer
    episodes: list[Episode] = []
    states: list[dict[str, Any]] = []
    for env, spec in zip(envs, tasks, strict=True):
        episode = Episode(task_id=spec.task_id, group_id=spec.group_id, task="")
        try:
            obs, info = env.reset(seed=spec.seed, options={"split": spec.split})
            episode.task = info.get("task", "")
            states.append({"obs": obs, "info": info, "history": [], "done": False})
        except Exception:  # noqa: BLE001 - any environment failure is counted, not fatal
            log.exception("environment reset failed for %s", spec.task_id)
            episode.env_error = True
            states.append({"done": True})
        episodes.append(episode)

    generated = 0
    for turn_index in range(max_turns):
        active = [i for i, state in enumerate(states) if not state["done"]]
        if not active:
            break
        prompts = []
        for i in active:
            state = states[i]
            admissible = state["info"].get("admissible_actions", [])
            text = prompt_builder.render(episodes[i].task, state["history"], state["obs"], admissible)
            prompts.append(prompt_builder.encode(tokenizer, text))
        responses = policy.generate(prompts, evaluation=evaluation)
        generated += sum(len(r) for r in responses)
        for i, prompt_ids, response_ids in zip(active, prompts, responses, strict=True):
            _advance(envs[i], episodes[i], states[i], prompt_ids, response_ids, tokenizer, turn_index, require_think)
    for i, state in enumerate(states):
        if not state["done"]:
            episodes[i].truncated = True
    return RolloutResult(episodes, generated, time.perf_counter() - start)


def _advance(
    env: gym.Env,
    episode: Episode,
    state: dict[str, Any],
    prompt_ids: list[int],
    response_ids: list[int],
    tokenizer: PreTrainedTokenizerBase,
    turn_index: int,
    require_think: bool,
) -> None:
    text = tokenizer.decode(response_ids, skip_special_tokens=True)
    parsed = parse_action(text, require_think=require_think)
    turn = Turn(prompt_ids, response_ids, text, parsed.action, False, state["obs"], turn_index)
    episode.turns.append(turn)
    if not parsed.ok:
        state["history"].append((state["obs"], parsed.action))
        return
    try:
        obs, reward, terminated, truncated, info = env.step(parsed.action)
    except Exception:  # noqa: BLE001 - a broken environment ends its episode, it never ends the run
        log.exception("environment step failed for %s", episode.task_id)
        episode.env_error = True
        state["done"] = True
        return
    turn.valid = bool(info.get("valid", True))
    turn.reward = float(reward)
    state["history"].append((state["obs"], parsed.action))
    state.update(obs=obs, info=info)
    if terminated or truncated:
        episode.success = bool(info.get("won", False))
        episode.truncated = bool(truncated and not terminated)
        state["done"] = True
