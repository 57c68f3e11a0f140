"""``ScienceWorldTextEnv``: ScienceWorld as a Gymnasium text environment on the fast path.

``scienceworld.ScienceWorldEnv.step`` runs at ~17 steps/s on these machines because every step rebuilds the list of
valid action-object combinations; this adapter calls the simulator's server step directly (~500 steps/s) and fetches
the valid combinations only when the prompt shows them (``admissible_actions=True``, ~25 ms per step).

Splits (by task id, the index into ``get_task_names()``; the held-out set is RLVMR's / the EPO code's L2 OOD tasks):

- ``train``: training variations of the in-distribution tasks;
- ``val_iid``: dev variations of the same tasks (seen tasks, unseen variations);
- ``val_ood``: test variations of the held-out tasks, or, when ``task_names`` holds none of them, test variations of
  the chosen tasks (unseen variations, like the L1 split).

``reset(seed=s)`` picks (task, variation) deterministically from ``(split, s)``.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any, Literal

import gymnasium as gym
from gymnasium import spaces

from datamodules.envs import require

#: RLVMR's held-out ScienceWorld task ids (the EPO code's L2 test split).
OOD_TASK_IDS: tuple[int, ...] = (1, 4, 8, 11, 13, 16, 18, 21, 24, 28)
#: What ScienceWorld answers to an input it cannot parse.
UNKNOWN_ACTION = "No known action matches that input."


class ScienceWorldTextEnv(gym.Env):
    """One ScienceWorld simulator (a JVM of ~670 MB) with the paper's success reward.

    ``info`` carries ``task`` (the task description), ``won``, ``score`` (0-100), ``admissible_actions`` (the valid
    action-object combinations, or [] with ``admissible_actions=False``) and, after a step, ``valid``: False when
    ScienceWorld did not understand the action: a wasted move, which the rollout counts as an invalid action and, unless
    ``data.penalize_inadmissible`` is false (the paper configs, as the EPO code, penalize only unparsable responses),
    penalizes like an unparsable one.

    Args:
        task_names: the tasks to play (default: all 30).
        simplification: ScienceWorld simplifications; ``easy`` as in the paper.
        env_step_limit: the simulator's own move limit (100 in the EPO code); reaching it ends the episode.
        reward: ``success`` (the paper's 1 on success, else 0) or ``code`` (the released code's 10 * won).
        ood_task_ids: held-out task ids of the ``val_ood`` split.
        admissible_actions: fetch the valid action-object combinations every step (the prompt lists them).

    Raises:
        ImportError: If ``scienceworld`` is not installed.
        RuntimeError: If ``java`` is not on the PATH.
        ValueError: If a task name is unknown or no task is left for a split.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        task_names: Sequence[str] | None = None,
        simplification: str = "easy",
        env_step_limit: int = 100,
        reward: Literal["success", "code"] = "success",
        ood_task_ids: Sequence[int] = OOD_TASK_IDS,
        admissible_actions: bool = True,
    ) -> None:
        require("scienceworld", "scienceworld")
        if shutil.which("java") is None:
            raise RuntimeError(
                "ScienceWorld runs on Java 17 and no `java` is on the PATH: install it (Debian/Ubuntu: "
                "`apt install openjdk-17-jre-headless`; conda: `conda install openjdk=17`) and retry."
            )
        if reward not in ("success", "code"):
            raise ValueError(f"reward must be 'success' (0/1, the paper) or 'code' (10 * won), got {reward!r}.")
        from scienceworld import ScienceWorldEnv

        self.observation_space = spaces.Text(max_length=16384)
        self.action_space = spaces.Text(max_length=256)
        self.simplification = simplification
        self.reward_mode = reward
        self.admissible_actions = admissible_actions
        self.env = ScienceWorldEnv("", envStepLimit=env_step_limit)
        self.env_step_limit = env_step_limit
        all_tasks = list(self.env.get_task_names())
        chosen = list(task_names) if task_names else all_tasks
        unknown = sorted(set(chosen) - set(all_tasks))
        if unknown:
            self.env.close()
            raise ValueError(f"unknown ScienceWorld tasks {unknown}; choose from {all_tasks}.")
        held_out = {all_tasks[i] for i in ood_task_ids}
        seen = [t for t in chosen if t not in held_out] or chosen
        unseen = [t for t in chosen if t in held_out] or (list(held_out) if not task_names else [])
        self._splits = {
            "train": [(t, "train") for t in seen],
            "val_iid": [(t, "dev") for t in seen],
            "val_ood": [(t, "test") for t in unseen] or [(t, "test") for t in seen],
            "test": [(t, "test") for t in seen],
        }
        self.task_name = ""
        self.task = ""
        self.variation = -1
        self.done = True

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Load the (task, variation) of ``seed`` in ``options["split"]`` and return the first observation."""
        super().reset(seed=seed)
        split = (options or {}).get("split", "train")
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}; choose one of {sorted(self._splits)}.")
        rng = random.Random(f"scienceworld:{split}:{seed}")
        self.task_name, kind = rng.choice(self._splits[split])
        self.env.load(self.task_name, 0, self.simplification, generateGoldPath=False)
        variations = {"train": self.env.get_variations_train, "dev": self.env.get_variations_dev}.get(
            kind, self.env.get_variations_test
        )()
        self.variation = rng.choice(list(variations))
        return self._load(gold=False)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """One simulator step on the fast path: the server step, valid actions only if the prompt shows them."""
        if self.done:
            raise RuntimeError("call reset() before step(), and again after the episode ended.")
        obs = self.env.server.step(str(action))
        score = int(round(100 * self.env.server.getScore()))
        won = score >= 100
        over_limit = self.env.get_num_moves() > self.env_step_limit
        terminated = bool(self.env.server.getCompleted()) or score < 0 or won
        self.done = terminated or over_limit
        reward = (10.0 if self.reward_mode == "code" else 1.0) * float(won and self.done)
        info = self._info(score, won, valid=obs.strip() != UNKNOWN_ACTION)
        return obs, reward, terminated, over_limit and not terminated, info

    def close(self) -> None:
        """Shut the simulator's JVM down and wait for it to exit (it holds ~670 MB)."""
        process = self.env._gateway.java_process
        if process.poll() is not None:
            return
        self.env.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    # ------------------------------------------------------------------ helpers
    def gold_actions(self) -> list[str]:
        """The current task's gold action sequence; reloads the task, so call it right after ``reset``."""
        self._load(gold=True)
        return list(self.env.get_gold_action_sequence())

    def _load(self, gold: bool) -> tuple[str, dict[str, Any]]:
        self.env.load(self.task_name, self.variation, self.simplification, generateGoldPath=gold)
        obs, _ = self.env.reset()
        self.task = self.env.taskdescription().removeprefix("Task Description:").strip()
        self.done = False
        return obs, self._info(int(round(100 * self.env.server.getScore())), won=False)

    def _info(self, score: int, won: bool, **extra: Any) -> dict[str, Any]:
        admissible = []
        if self.admissible_actions and not won:
            admissible = sorted(self.env.get_valid_action_object_combinations())
        return {"task": self.task, "won": won, "score": score, "admissible_actions": admissible, **extra}
