"""``RolloutDataModule``: regenerates the training data from the environments every epoch (one epoch = one RL step).

``train_dataloader()`` runs under ``Trainer(reload_dataloaders_every_n_epochs=1)`` (style-anchors 3.2 pattern B): it
plays ``tasks_per_step`` tasks with ``group_size`` environments each (a GRPO group shares its task), turns the episodes
into turn rows, has the policy score them (old log-probs, entropy, critic values) and assign their advantages, and
returns a sized loader of padded micro-batches.
``val_dataloader()`` plays held-out tasks of the ``val_iid`` and ``val_ood`` splits with the evaluation temperature.

Every random choice of RL step k (tasks, sampling, shuffling) is seeded from ``(seed, k, rank)``, so a run resumed from
a checkpoint after step k replays exactly what the uninterrupted run does at step k + 1.
"""

from __future__ import annotations

import functools
import random
import statistics
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from typing_extensions import override

from datamodules.env_pool import EnvPool
from datamodules.envs import get_suite
from datamodules.prompts import TEMPLATE_WORDS
from datamodules.rollout import RolloutResult, TaskSpec, collect_episodes
from datamodules.turn_rows import collate_rows, episodes_to_rows
from epo_lightning.types import Episode

VAL_SPLITS = ("val_iid", "val_ood")


def _identity(item: Any) -> Any:
    return item


class RolloutDataModule(pl.LightningDataModule):
    """Rollout data for EPO/GRPO training on a text-environment suite.

    Args:
        env: suite name (see ``datamodules.envs.SUITES``), the embedded suite by default.
        env_kwargs: keyword arguments for the suite's environment (e.g. ``{"difficulty": "easy"}``).
        tasks_per_step: distinct tasks per RL step (per rank).
        group_size: environments per task (G, the GRPO group size).
        max_turns: turns per episode before truncation.
        history_length: previous (observation, action) pairs shown in the prompt.
        micro_batch_size: turn rows per training micro-batch (one ``training_step``).
        reward_scale: multiplier of the environment's success reward (1 as in the paper, 10 as in the released code).
        invalid_action_penalty: subtracted from the score of a turn whose action was invalid (0.1 in the EPO code).
        val_tasks: tasks per validation split (per rank), one episode each.
        require_think: responses must contain ``<think>...</think>`` to be valid (chat models, released-code rule).
        num_transcripts: episodes per RL step kept as text for TensorBoard.
        num_workers: environment worker processes that step the environments concurrently (``EnvPool``); 0 steps
            them in the training process, the right choice for fast environments. A slow environment such as
            ScienceWorld (a ~670 MB JVM per environment) wants a few.
        env_timeout: seconds a worker may take to answer one turn before it is restarted and its episodes dropped.
        seed: root seed of task sampling, action sampling and shuffling.
    """

    def __init__(
        self,
        env: str = "embedded",
        env_kwargs: dict[str, Any] | None = None,
        tasks_per_step: int = 8,
        group_size: int = 8,
        max_turns: int = 20,
        history_length: int = 2,
        micro_batch_size: int = 64,
        reward_scale: float = 1.0,
        invalid_action_penalty: float = 0.1,
        val_tasks: int = 32,
        require_think: bool = False,
        num_transcripts: int = 2,
        num_workers: int = 0,
        env_timeout: float = 120.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("tasks_per_step", tasks_per_step),
            ("group_size", group_size),
            ("max_turns", max_turns),
            ("micro_batch_size", micro_batch_size),
        ):
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}.")
        if val_tasks < 0 or invalid_action_penalty < 0 or reward_scale <= 0:
            raise ValueError("data.val_tasks and data.invalid_action_penalty must be >= 0 and data.reward_scale > 0.")
        if num_workers < 0 or env_timeout <= 0:
            raise ValueError(
                f"data.num_workers must be >= 0 (0 steps in-process) and data.env_timeout > 0 seconds, got "
                f"{num_workers} and {env_timeout}."
            )
        self.env = env
        self.suite = get_suite(env)
        self.env_kwargs = dict(env_kwargs or {})
        self.tasks_per_step = tasks_per_step
        self.group_size = group_size
        self.max_turns = max_turns
        self.prompt_builder = self.suite.prompt(history_length=history_length)
        self.micro_batch_size = micro_batch_size
        self.reward_scale = reward_scale
        self.invalid_action_penalty = invalid_action_penalty
        self.val_tasks = val_tasks
        self.require_think = require_think
        self.num_transcripts = num_transcripts
        self.num_workers = num_workers
        self.env_timeout = env_timeout
        self.seed = seed
        self.rollout_step = 0
        self.rollout_stats: dict[str, float] = {}
        self.transcripts: list[str] = []
        self._prepared: tuple[int, DataLoader] | None = None
        self._pool: EnvPool | None = None

    # ------------------------------------------------------------------ lifecycle
    @override
    def setup(self, stage: str) -> None:
        # One pool serves training and evaluation, which never run at the same time.
        if self._pool is None:
            size = max(self.tasks_per_step * self.group_size, self.val_tasks)
            make = functools.partial(self.suite.make, **self.env_kwargs)
            self._pool = EnvPool(make, size, num_workers=self.num_workers, timeout=self.env_timeout)

    @override
    def teardown(self, stage: str) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @override
    def state_dict(self) -> dict[str, Any]:
        """The task cursor: RL steps collected so far (every random choice of step k is seeded from (seed, k))."""
        return {"rollout_step": self.rollout_step, "seed": self.seed}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rollout_step = int(state_dict.get("rollout_step", 0))

    # ------------------------------------------------------------------ what the tiny preset needs
    def vocabulary(self, examples: Sequence[tuple[str, Sequence[str]]] = ()) -> tuple[str, ...]:
        """Every word of the environment, the prompt template and ``examples`` (for word-level tokenizers).

        Words are whitespace-separated pieces, exactly what the tiny preset's ``WhitespaceSplit`` tokenizer sees, so
        a suite whose observations carry punctuation ("kitchen.") is covered by the prompts of its format-prior play.
        """
        words = set(self.suite.vocabulary()) | set(TEMPLATE_WORDS)
        for prompt, actions in examples:
            words.update(prompt.split())
            words.update(word for action in actions for word in action.split())
        return tuple(sorted(words))

    def format_prior_examples(self, num_states: int, seed: int) -> list[tuple[str, list[str]]]:
        """``num_states`` (prompt text, admissible actions) pairs from uniformly random play on the train split."""
        rng = random.Random(f"prior:{seed}")
        env = self.suite.make(**self.env_kwargs)
        examples: list[tuple[str, list[str]]] = []
        try:
            while len(examples) < num_states:
                obs, info = env.reset(seed=rng.randrange(2**31), options={"split": "train"})
                history: list[tuple[str, str]] = []
                for _ in range(self.max_turns):
                    admissible = list(info["admissible_actions"])
                    if not admissible:
                        if not examples:
                            raise ValueError(
                                f"the {self.env!r} environment lists no admissible actions, so the tiny preset has "
                                "no format prior to learn: enable them in data.env_kwargs or set "
                                "model.tiny.prior_states: 0."
                            )
                        break
                    examples.append((self.prompt_builder.render(info["task"], history, obs, admissible), admissible))
                    action = rng.choice(admissible)
                    history.append((obs, action))
                    obs, _, terminated, truncated, info = env.step(action)
                    if terminated or truncated or len(examples) >= num_states:
                        break
        finally:
            env.close()
        return examples

    # ------------------------------------------------------------------ loaders
    @override
    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch
        if self._prepared is not None and self._prepared[0] == epoch:
            return self._prepared[1]
        # Resuming from the end of epoch k, Lightning first asks again for epoch k's loader and then, having advanced,
        # for epoch k + 1's: answer the stale request with step k + 1's rollout and hand the same loader back next.
        step = max(epoch, self.rollout_step)
        loader = self._collect_training_data(step)
        self._prepared = (step, loader)
        return loader

    def _collect_training_data(self, step: int) -> DataLoader:
        policy = self.trainer.lightning_module
        rng = random.Random(f"{self.seed}:train:{step}:{self.trainer.global_rank}")
        tasks = [
            TaskSpec("train", task_seed, group)
            for group, task_seed in enumerate(rng.randrange(2**31) for _ in range(self.tasks_per_step))
            for _ in range(self.group_size)
        ]
        restarts = self._pool.restarts
        result = self._play(policy, tasks, rng.randrange(2**31), evaluation=False)
        rows = episodes_to_rows(result.episodes, self.reward_scale, self.invalid_action_penalty)
        rng.shuffle(rows)
        with torch.no_grad():
            batches = [
                policy.score(collate_rows(rows[i : i + self.micro_batch_size], policy.tokenizer.pad_token_id))
                for i in range(0, len(rows), self.micro_batch_size)
            ]
            policy.assign_advantages(batches)  # over the whole step: group baselines and whitening span every batch
        self.rollout_stats = rollout_statistics(result, len(rows))
        self.rollout_stats["rollout/env_restarts"] = float(self._pool.restarts - restarts)
        self.transcripts = [render_transcript(e) for e in result.episodes[: self.num_transcripts]]
        self.rollout_step = step + 1
        return DataLoader(batches, batch_size=None, shuffle=False, collate_fn=_identity)

    @override
    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._evaluate(), batch_size=None, collate_fn=_identity)

    @override
    def test_dataloader(self) -> DataLoader:
        return DataLoader(self._evaluate(), batch_size=None, collate_fn=_identity)

    def _evaluate(self) -> list[dict[str, Any]]:
        policy = self.trainer.lightning_module
        rank, world = self.trainer.global_rank, self.trainer.world_size
        items = []
        for split in VAL_SPLITS:
            seeds = list(range(self.val_tasks))[rank::world]
            tasks = [TaskSpec(split, s, i) for i, s in enumerate(seeds)]
            result = self._play(policy, tasks, hash_seed(self.seed, split), evaluation=True)
            episodes = [e for e in result.episodes if not e.env_error]
            items.append(
                {
                    "split": split,
                    "success": torch.tensor([float(e.success) for e in episodes]),
                    "episode_len": torch.tensor([float(len(e.turns)) for e in episodes]),
                }
            )
        return items

    def _play(self, policy: Any, tasks: Sequence[TaskSpec], torch_seed: int, evaluation: bool) -> RolloutResult:
        was_training = policy.training
        policy.eval()
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(torch_seed)
                return collect_episodes(
                    policy, self._pool, tasks, self.prompt_builder, self.max_turns, evaluation, self.require_think
                )
        finally:
            policy.train(was_training)


def hash_seed(*parts: Any) -> int:
    """A stable 31-bit seed from ``parts`` (``random.Random`` hashes strings with SHA-512, unlike ``hash``)."""
    return random.Random(":".join(map(str, parts))).randrange(2**31)


def rollout_statistics(result: RolloutResult, num_rows: int) -> dict[str, float]:
    """The ``rollout/*`` metrics of design.md for one collection."""
    episodes = [e for e in result.episodes if not e.env_error]
    turns = [t for e in episodes for t in e.turns]
    mean = statistics.fmean

    return {
        "rollout/success_rate": mean([e.success for e in episodes]) if episodes else 0.0,
        "rollout/return_mean": mean([e.episode_return for e in episodes]) if episodes else 0.0,
        "rollout/episode_len": mean([len(e.turns) for e in episodes]) if episodes else 0.0,
        "rollout/valid_action_ratio": mean([t.valid for t in turns]) if turns else 0.0,
        "rollout/truncated_frac": mean([e.truncated for e in episodes]) if episodes else 0.0,
        "rollout/env_errors": float(sum(e.env_error for e in result.episodes)),
        "rollout/turn_samples": float(num_rows),
        "rollout/tokens_per_s": result.generated_tokens / max(result.seconds, 1e-9),
        "time/rollout_s": result.seconds,
    }


def render_transcript(episode: Episode) -> str:
    """A readable transcript of one episode (markdown, for TensorBoard text)."""
    lines = [f"**task** {episode.task_id}: {episode.task}  ", f"**success** {episode.success}  "]
    for turn in episode.turns:
        mark = "" if turn.valid else " (invalid)"
        lines.append(f"{turn.turn_index}. obs: {turn.observation}  \n   → `{turn.response_text}`{mark}  ")
    return "\n".join(lines)
