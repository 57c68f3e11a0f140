"""``EmbeddedTextEnv``: the embedded suite as a Gymnasium text environment with a sparse success reward."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium import spaces

from datamodules.envs.embedded.generator import generate_world
from datamodules.envs.embedded.world import State, World, describe, transitions


class EmbeddedTextEnv(gym.Env):
    """Rooms, items, containers and locks; reward 1.0 on the step that achieves the goal, 0 otherwise.

    ``reset(seed=s, options={"split": "train" | "val_iid" | "val_ood"})`` builds the task of ``s`` in that split, so
    environments reset with the same seed and split play the same task (a GRPO group). ``info`` always carries
    ``admissible_actions`` (sorted), ``won`` and ``task``; after a step also ``valid``. An inadmissible action (any
    string) changes nothing and returns "nothing happens .".

    Args:
        difficulty: ``default`` (optimal solutions of 6+ actions) or ``easy``.
    """

    metadata = {"render_modes": []}

    def __init__(self, difficulty: str = "default") -> None:
        self.difficulty = difficulty
        self.observation_space = spaces.Text(max_length=4096)
        self.action_space = spaces.Text(max_length=256)
        self.world: World | None = None
        self.state: State | None = None
        self._moves: dict[str, tuple[State, str]] = {}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Start the task of ``seed`` in ``options["split"]`` (default ``train``)."""
        super().reset(seed=seed)
        split = (options or {}).get("split", "train")
        task_seed = seed if seed is not None else int(self.np_random.integers(2**31))
        self.world = generate_world(split, task_seed, self.difficulty)
        self.state = self.world.start
        self._moves = transitions(self.world, self.state)
        return f"your goal : {self.world.task} . " + describe(self.world, self.state), self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Apply ``action``; anything not admissible is a no-op with ``info["valid"] = False``."""
        if self.world is None:
            raise RuntimeError("call reset() before step()")
        move = self._moves.get(" ".join(str(action).lower().split()))
        if move is None:
            return "nothing happens . " + describe(self.world, self.state), 0.0, False, False, self._info(valid=False)
        self.state, message = move
        self._moves = transitions(self.world, self.state)
        won = self.world.won(self.state)
        obs = (message + " " if message else "") + describe(self.world, self.state)
        return obs, float(won), won, False, self._info(valid=True)

    def _info(self, **extra: Any) -> dict[str, Any]:
        won = self.world.won(self.state)
        return {"admissible_actions": [] if won else sorted(self._moves), "won": won, "task": self.world.task, **extra}
