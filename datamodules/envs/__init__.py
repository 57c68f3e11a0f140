"""Environment suites behind one Gymnasium text interface, looked up by name or by import path.

A suite provides ``make(**kwargs) -> gymnasium.Env`` (reset with ``options={"split": ...}``, text observations,
``info["admissible_actions"]``, ``info["won"]``, ``info["task"]``), ``vocabulary``, words it can emit beyond those the
format-prior play shows (the tiny preset's tokenizer is fitted on both), and ``prompt``, the ``PromptBuilder`` class
that renders its turns (the plain layout by default; a suite with its own paper prompt subclasses it). Suites with heavy
optional dependencies import them only when made.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym

from datamodules.prompts import PromptBuilder
from epo_lightning.errors import ConfigurationError


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


def register_suite(
    name: str,
    make: Callable[..., gym.Env],
    prompt: type[PromptBuilder] = PromptBuilder,
    vocabulary: Callable[[], tuple[str, ...]] = tuple,
) -> None:
    """Make ``data.env: <name>`` build environments with ``make`` (for packages that ship environments)."""
    SUITES[name] = lambda: EnvSuite(make=make, vocabulary=vocabulary, prompt=prompt)


def get_suite(name: str) -> EnvSuite:
    """The suite registered as ``name``, or the one a dotted import path names.

    A path (``my_package.envs.GuessEnv``) may name an ``EnvSuite``, or a Gymnasium environment class or factory; such
    a class may carry its prompt as a ``prompt_builder`` attribute (a ``PromptBuilder`` subclass).
    """
    if name in SUITES:
        return SUITES[name]()
    if "." not in name:
        raise ConfigurationError(
            f"unknown env {name!r}: choose one of {sorted(SUITES)}, or give an import path (pkg.module.Env)."
        )
    module_name, _, attribute = name.rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ConfigurationError(
            f"data.env={name!r} does not import ({type(error).__name__}: {error}); the epo command looks in the "
            "current directory and the installed packages."
        ) from None
    if isinstance(target, EnvSuite):
        return target
    if not callable(target):
        kind = type(target).__name__
        raise ConfigurationError(f"data.env={name!r} is a {kind}, not an environment class or factory.")
    return EnvSuite(make=target, prompt=getattr(target, "prompt_builder", PromptBuilder))


def check_contract(make: Callable[[], gym.Env], name: str) -> None:
    """Reset one environment and raise a ``ConfigurationError`` if it breaks the text-environment contract.

    ``reset(seed=..., options={"split": "train"})`` must return ``(observation: str, info: dict)`` with ``info["task"]``
    (the goal text) and ``info["admissible_actions"]`` (a list, which the prompt shows; it may be empty).
    """
    env = make()
    try:
        result = env.reset(seed=0, options={"split": "train"})
    finally:
        env.close()
    info = result[1] if isinstance(result, tuple) and len(result) == 2 else None
    if not isinstance(result[0] if info is not None else None, str) or not isinstance(info, dict):
        problem = f"reset returned {repr(result)[:120]}"
    elif "task" not in info or not isinstance(info.get("admissible_actions"), list | tuple):
        problem = f"reset's info has the keys {sorted(info)}"
    else:
        return
    raise ConfigurationError(
        f"data.env={name!r} breaks the environment contract: {problem}; expected (observation: str, info: dict with "
        "'task': str and 'admissible_actions': list), and a step returning (str, reward, terminated, truncated, info "
        "with 'won')."
    )
