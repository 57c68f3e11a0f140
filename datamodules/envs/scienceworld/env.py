"""``ScienceWorldTextEnv``: ScienceWorld as a Gymnasium text environment on the fast path.

``scienceworld.ScienceWorldEnv.step`` runs at ~17 steps/s on these machines because every step rebuilds the list of
valid action-object combinations; this adapter calls the simulator's server step directly (~500 steps/s) and fetches
the valid combinations only when the prompt shows them (``admissible_actions=True``, ~25 ms per step).

Splits (by task id, the index into ``get_task_names()``), ``splits="unseen_tasks"`` (the default; the held-out set is
RLVMR's / the EPO code's L2 OOD tasks):

- ``train``: training variations of the in-distribution tasks;
- ``val_iid``: dev variations of the same tasks (seen tasks, unseen variations);
- ``val_ood``: test variations of the held-out tasks, or, when ``task_names`` holds none of them, test variations of
  the chosen tasks (unseen variations, like the L1 split).

``splits="paper"``: what the paper reports (IID = L0, OOD = L1). ``train``, ``val_iid`` and ``val_ood`` are the train,
dev and test variations of every task but ``use-thermometer`` (ids 0-28): pair for pair the EPO code's
``variations_idx`` lists L0 train (3,322), L0 test (1,661) and L1 test (1,684), checked against its files.

``reset(seed=s)`` picks (task, variation) deterministically from ``(split, s)``: a task, then one of its variations
(``unseen_tasks``), or one (task, variation) pair of the split, as the EPO code samples its lists (``paper``; a task
with many variations comes up as often as it has them: ``inclined-plane-friction-named-surfaces`` is 21% of L0 train).
The ``paper`` splits list every task's variations once, at construction (~5 s).
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
#: The one task the paper's L0 and L1 lists leave out (id 29).
PAPER_EXCLUDED_TASK = "use-thermometer"
#: ``unseen_tasks``: held-out task types as OOD (L2); ``paper``: unseen variations of the trained tasks (L0 / L1).
SPLITS = ("unseen_tasks", "paper")
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
        splits: ``unseen_tasks`` (held-out task types as OOD, RLVMR's L2) or ``paper`` (the paper's IID = L0 and
            OOD = L1: unseen variations of the 29 trained tasks; ``task_names`` and ``ood_task_ids`` stay unset).
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
        splits: Literal["unseen_tasks", "paper"] = "unseen_tasks",
    ) -> None:
        require("scienceworld", "scienceworld")
        if shutil.which("java") is None:
            raise RuntimeError(
                "ScienceWorld runs on Java 17 and no `java` is on the PATH: install it (Debian/Ubuntu: "
                "`apt install openjdk-17-jre-headless`; conda: `conda install openjdk=17`) and retry."
            )
        if reward not in ("success", "code"):
            raise ValueError(f"reward must be 'success' (0/1, the paper) or 'code' (10 * won), got {reward!r}.")
        if splits not in SPLITS:
            raise ValueError(f"splits must be one of {SPLITS}, got {splits!r}.")
        if splits == "paper" and (task_names or tuple(ood_task_ids) != OOD_TASK_IDS):
            raise ValueError(
                "splits='paper' fixes the tasks (all but use-thermometer) and has no held-out ones: leave task_names "
                "and ood_task_ids unset, or use splits='unseen_tasks'."
            )
        from scienceworld import ScienceWorldEnv

        self.observation_space = spaces.Text(max_length=16384)
        self.action_space = spaces.Text(max_length=256)
        self.simplification = simplification
        self.reward_mode = reward
        self.admissible_actions = admissible_actions
        self.env = ScienceWorldEnv("", envStepLimit=env_step_limit)
        self.env_step_limit = env_step_limit
        all_tasks = list(self.env.get_task_names())
        if splits == "paper":
            task_names, ood_task_ids = [t for t in all_tasks if t != PAPER_EXCLUDED_TASK], ()
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
        self._pairs: dict[str, list[tuple[str, int]]] = {}
        if splits == "paper":
            variations = {task: self._variations(task) for task in seen}
            self._pairs = {
                split: [(task, v) for task, kind in entries for v in variations[task][kind]]
                for split, entries in self._splits.items()
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
        if self._pairs:
            self.task_name, self.variation = rng.choice(self._pairs[split])
        else:
            self.task_name, kind = rng.choice(self._splits[split])
            self.variation = rng.choice(self._variations(self.task_name)[kind])
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

    def _variations(self, task: str) -> dict[str, list[int]]:
        """The task's ``train``, ``dev`` and ``test`` variation ids (loading its variation 0)."""
        self.env.load(task, 0, self.simplification, generateGoldPath=False)
        return {
            "train": list(self.env.get_variations_train()),
            "dev": list(self.env.get_variations_dev()),
            "test": list(self.env.get_variations_test()),
        }

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
