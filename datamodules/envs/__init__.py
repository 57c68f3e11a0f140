"""Environment suites behind one Gymnasium text interface, looked up by name.

A suite provides ``make(**kwargs) -> gymnasium.Env`` (reset with ``options={"split": ...}``, text observations,
``info["admissible_actions"]``, ``info["won"]``, ``info["task"]``), ``vocabulary``, words it can emit beyond those the
format-prior play shows (the tiny preset's tokenizer is fitted on both), and ``prompt``, the ``PromptBuilder`` class
that renders its turns (the plain layout by default; a suite with its own paper prompt subclasses it). Suites with heavy
optional dependencies import them only when made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym

from datamodules.prompts import PromptBuilder


@dataclass(frozen=True)
class EnvSuite:
    """How to build one suite's environments and which words they use."""

    make: Callable[..., gym.Env]
    vocabulary: Callable[[], tuple[str, ...]] = tuple  # open-vocabulary suites: the prior play's words suffice
    prompt: type[PromptBuilder] = PromptBuilder


def require(module: str, extra: str) -> None:
    """Import ``module`` or raise an ImportError that names the extra to install."""
    try:
        __import__(module)
    except ImportError as error:
        raise ImportError(
            f"the {extra!r} environments need the `{module}` package: pip install 'epo-lightning[{extra}]'"
        ) from error


def _embedded() -> EnvSuite:
    from datamodules.envs.embedded import VOCABULARY, EmbeddedTextEnv

    return EnvSuite(make=EmbeddedTextEnv, vocabulary=lambda: VOCABULARY)


def _scienceworld() -> EnvSuite:
    from datamodules.envs.scienceworld import ScienceWorldPrompt, ScienceWorldTextEnv

    return EnvSuite(make=ScienceWorldTextEnv, prompt=ScienceWorldPrompt)


def _textworld() -> EnvSuite:
    from datamodules.envs.textworld import TextWorldTextEnv

    return EnvSuite(make=TextWorldTextEnv)


def _alfworld() -> EnvSuite:
    from datamodules.envs.alfworld import AlfWorldPrompt, AlfWorldTextEnv

    return EnvSuite(make=AlfWorldTextEnv, prompt=AlfWorldPrompt)


SUITES: dict[str, Callable[[], EnvSuite]] = {
    "alfworld": _alfworld,
    "embedded": _embedded,
    "scienceworld": _scienceworld,
    "textworld": _textworld,
}


def get_suite(name: str) -> EnvSuite:
    """Return the suite registered as ``name``."""
    if name not in SUITES:
        raise ValueError(f"unknown env {name!r}; choose one of {sorted(SUITES)}.")
    return SUITES[name]()
