"""``TextWorldTextEnv``: TextWorld challenge games as a Gymnasium text environment with a sparse success reward.

Each split draws from its own pool of generated games (``num_games``); ``reset(seed=s)`` plays game
``s % num_games[split]`` of the split. ``val_iid`` holds unseen games of the training settings; ``val_ood`` unseen
games of ``ood_settings`` (by default a harder level for coin collector and treasure hunter, the same settings
otherwise). Observations are cleaned of TextWorld's banner, prompt and status bar, and whitespace is collapsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from datamodules.envs import require
from datamodules.envs.textworld.game_env import TextWorldGame
from datamodules.envs.textworld.games import game_path

#: Settings of each challenge when none are given (those of TextWorld's ``tw-make`` examples).
DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {
    "tw-coin_collector": {"level": 5},
    "tw-treasure_hunter": {"level": 5},
    "tw-simple": {"rewards": "sparse", "goal": "detailed", "test": False},
    "tw-cooking": {
        "recipe": 2,
        "take": 2,
        "go": 6,
        "open": True,
        "cook": True,
        "cut": True,
        "drop": False,
        "recipe_seed": 0,
        "split": "train",
    },
}


def clean_observation(text: str) -> str:
    """TextWorld's text without the ASCII banner, the ``>`` prompt and the status bar, on one line."""
    text = text.rsplit(">", 1)[0] if ">" in text else text
    if "-=" in text:
        text = text[text.index("-=") :]
    return " ".join(text.split())


class TextWorldTextEnv(TextWorldGame):
    """A TextWorld challenge: reward on winning only; admissible commands from TextWorld itself.

    Args:
        challenge: ``tw-coin_collector``, ``tw-treasure_hunter``, ``tw-simple`` or ``tw-cooking``.
        settings: the challenge's settings, over its ``DEFAULT_SETTINGS``.
        ood_settings: settings of the ``val_ood`` games (None: level + 5 where there is a level, else ``settings``).
        num_games: games per split (``{"train": 100, "val_iid": 20, "val_ood": 20, "test": 20}`` when None).
        max_episode_steps: TextWorld's own move limit.
        reward: ``success`` (1 on winning) or ``code`` (10 * won, the EPO code's scale).
        cache_dir: where generated games are kept.

    Raises:
        ImportError: If ``textworld`` is not installed.
        ValueError: If the challenge or a split size is invalid.
    """

    def __init__(
        self,
        challenge: str = "tw-coin_collector",
        settings: Mapping[str, Any] | None = None,
        ood_settings: Mapping[str, Any] | None = None,
        num_games: Mapping[str, int] | None = None,
        max_episode_steps: int = 100,
        reward: Literal["success", "code"] = "success",
        cache_dir: str = "~/.cache/epo_lightning/textworld",
    ) -> None:
        require("textworld", "textworld")
        if challenge not in DEFAULT_SETTINGS:
            raise ValueError(f"unknown TextWorld challenge {challenge!r}; choose one of {sorted(DEFAULT_SETTINGS)}.")
        if reward not in ("success", "code"):
            raise ValueError(f"reward must be 'success' (0/1) or 'code' (10 * won), got {reward!r}.")
        super().__init__(max_episode_steps, 10.0 if reward == "code" else 1.0)
        self.challenge = challenge
        self.settings = {**DEFAULT_SETTINGS[challenge], **(settings or {})}
        if ood_settings is None:
            ood_settings = dict(self.settings)
            if "level" in ood_settings:
                ood_settings["level"] = int(ood_settings["level"]) + 5
        self.split_settings = {"train": self.settings, "val_iid": self.settings, "test": self.settings}
        self.split_settings["val_ood"] = dict(ood_settings)
        self.num_games = {"train": 100, "val_iid": 20, "val_ood": 20, "test": 20, **(num_games or {})}
        if min(self.num_games.values()) < 1:
            raise ValueError(f"num_games must be >= 1 per split, got {self.num_games}.")
        self.cache_dir = cache_dir

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Play game ``seed % num_games[split]`` of ``options["split"]`` (generated on first use)."""
        super().reset(seed=seed)
        split = (options or {}).get("split", "train")
        if split not in self.split_settings:
            raise ValueError(f"unknown split {split!r}; choose one of {sorted(self.split_settings)}.")
        index = (seed or 0) % self.num_games[split]
        obs, infos = self.play(str(game_path(self.challenge, self.split_settings[split], split, index, self.cache_dir)))
        self.task = " ".join(str(infos.get("objective", "")).split())
        return self.clean(obs), self.public_info(infos)

    def walkthrough(self) -> list[str]:
        """The current game's winning command sequence (TextWorld's walkthrough)."""
        return list(self._info.get("extra.walkthrough") or [])

    def request_infos(self) -> Any:
        """Admissible commands, won / lost, the objective and the walkthrough."""
        import textworld

        return textworld.EnvInfos(admissible_commands=True, won=True, lost=True, objective=True, extras=["walkthrough"])

    def clean(self, observation: str) -> str:
        """See ``clean_observation``."""
        return clean_observation(observation)
