"""The embedded text-game suite: procedurally generated, multi-turn, sparse-reward, pure Python (see ``generator``)."""

from datamodules.envs.embedded.env import EmbeddedTextEnv
from datamodules.envs.embedded.generator import DIFFICULTIES, SPLITS, generate_world
from datamodules.envs.embedded.planner import solve
from datamodules.envs.embedded.vocabulary import VOCABULARY


def optimal_actions(env: EmbeddedTextEnv) -> list[str]:
    """A shortest action list that wins from the environment's current state ([] once won); does not change it."""
    return solve(env.world, env.state) or []


__all__ = ["DIFFICULTIES", "SPLITS", "VOCABULARY", "EmbeddedTextEnv", "generate_world", "optimal_actions"]
