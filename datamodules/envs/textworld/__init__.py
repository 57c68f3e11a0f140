"""TextWorld (PyPI ``textworld``): games generated offline by its bundled compiler, behind the suite interface."""

from datamodules.envs.textworld.env import DEFAULT_SETTINGS, TextWorldTextEnv
from datamodules.envs.textworld.games import game_path

__all__ = ["DEFAULT_SETTINGS", "TextWorldTextEnv", "game_path"]
