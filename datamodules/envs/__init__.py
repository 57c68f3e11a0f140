"""Environment suites behind one Gymnasium text interface, looked up by name.

A suite provides ``make(**kwargs) -> gymnasium.Env`` (reset with ``options={"split": ...}``, text observations,
``info["admissible_actions"]``, ``info["won"]``) and ``vocabulary``, every word it can emit (the tiny preset's
tokenizer is fitted on it). Suites with heavy optional dependencies import them only when made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym


@dataclass(frozen=True)
class EnvSuite:
    """How to build one suite's environments and which words they use."""

    make: Callable[..., gym.Env]
    vocabulary: Callable[[], tuple[str, ...]]


def _embedded() -> EnvSuite:
    from datamodules.envs.embedded import VOCABULARY, EmbeddedTextEnv

    return EnvSuite(make=EmbeddedTextEnv, vocabulary=lambda: VOCABULARY)


SUITES: dict[str, Callable[[], EnvSuite]] = {"embedded": _embedded}


def get_suite(name: str) -> EnvSuite:
    """Return the suite registered as ``name``."""
    if name not in SUITES:
        raise ValueError(f"unknown env {name!r}; choose one of {sorted(SUITES)}.")
    return SUITES[name]()
