"""``AlfWorldTextEnv``: ALFWorld's text games (TextWorld + PDDL) as a Gymnasium text environment.

Games come from ``$ALFWORLD_DATA/json_2.1.1/{train,valid_seen,valid_unseen}``: every trial folder holding a solvable
``game.tw-pddl`` and a ``traj_data.json`` whose task type is selected. ``train`` plays the training games,
``val_iid`` the ``valid_seen`` games and ``val_ood`` the ``valid_unseen`` games, as in the EPO code;
``reset(seed=s)`` plays game ``s % n`` of the split (sorted by path). Games load through TextWorld's gym with
alfworld's ``AlfredDemangler`` and ``AlfredInfos`` wrappers, as alfworld's own ``AlfredTWEnv`` does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from datamodules.envs import require
from datamodules.envs.textworld.game_env import TextWorldGame

#: The six ALFWorld task types (alfworld's ``TASK_TYPES``).
TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
SPLIT_FOLDERS = {"train": "train", "val_iid": "valid_seen", "val_ood": "valid_unseen"}
WELCOME = "-= Welcome to TextWorld, ALFRED! =-"


def find_games(data_dir: Path, split: str, task_types: Sequence[str]) -> list[Path]:
    """The solvable games of ``split`` with a selected task type, sorted."""
    games = []
    for traj in sorted((data_dir / "json_2.1.1" / SPLIT_FOLDERS[split]).rglob("traj_data.json")):
        game = traj.with_name("game.tw-pddl")
        if not game.exists() or json.loads(traj.read_text()).get("task_type") not in task_types:
            continue
        if json.loads(game.read_text()).get("solvable", False):
            games.append(game)
    return games


class AlfWorldTextEnv(TextWorldGame):
    """An ALFWorld household task; reward on success only.

    Args:
        data_dir: the ALFWorld data directory; None reads ``$ALFWORLD_DATA``.
        task_types: the task types to play (all six by default).
        max_episode_steps: TextWorld's move limit (the agent's turn limit is ``data.max_turns``, 50 in the paper).
        reward: ``success`` (the paper's 1 on success) or ``code`` (the released code's 10 * won).

    Raises:
        ImportError: If ``alfworld`` / ``textworld`` is not installed.
        FileNotFoundError: If the data directory or its training games are missing (the message says where they
            come from).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        task_types: Sequence[str] = TASK_TYPES,
        max_episode_steps: int = 100,
        reward: Literal["success", "code"] = "success",
    ) -> None:
        require("alfworld", "alfworld")
        unknown = sorted(set(task_types) - set(TASK_TYPES))
        if unknown:
            raise ValueError(f"unknown ALFWorld task types {unknown}; choose from {list(TASK_TYPES)}.")
        if reward not in ("success", "code"):
            raise ValueError(f"reward must be 'success' (0/1, the paper) or 'code' (10 * won), got {reward!r}.")
        super().__init__(max_episode_steps, 10.0 if reward == "code" else 1.0)
        root = data_dir or os.environ.get("ALFWORLD_DATA")
        self.games = {split: find_games(Path(root), split, task_types) for split in SPLIT_FOLDERS} if root else {}
        if not self.games.get("train"):
            raise FileNotFoundError(
                f"no ALFWorld training games under {root or '$ALFWORLD_DATA (unset)'}/json_2.1.1/train. The official "
                "games come from `alfworld-download` (needs github.com); point ALFWORLD_DATA or "
                "data.env_kwargs.data_dir at that folder. Offline, `python -m datamodules.envs.alfworld.make_games "
                "--out DIR` writes small ALFWorld-format games to train on."
            )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Play game ``seed % n`` of ``options["split"]``."""
        super().reset(seed=seed)
        split = (options or {}).get("split", "train")
        if split not in self.games:
            raise ValueError(f"unknown split {split!r}; choose one of {sorted(self.games)}.")
        if not self.games[split]:
            raise FileNotFoundError(f"no ALFWorld games for split {split!r} ({SPLIT_FOLDERS[split]}).")
        obs, infos = self.play(str(self.games[split][(seed or 0) % len(self.games[split])]))
        text = obs.replace(WELCOME, "").strip()
        text, _, self.task = (part.strip() for part in text.partition("Your task is to:"))
        return text, self.public_info(infos)

    def walkthrough(self) -> list[str]:
        """A winning command sequence from TextWorld's planner (``policy_commands``) for the current state."""
        return list(self._info.get("policy_commands") or [])

    def request_infos(self) -> Any:
        """Admissible commands, won, the planner's commands and the game file (as alfworld requests)."""
        import textworld

        return textworld.EnvInfos(admissible_commands=True, won=True, policy_commands=True, extras=["gamefile"])

    def wrappers(self) -> list[Any]:
        """The ``AlfredDemangler`` (readable names) and ``AlfredInfos`` wrappers, as alfworld's ``AlfredTWEnv``."""
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

        return [AlfredDemangler, AlfredInfos]
