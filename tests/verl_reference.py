"""verl's ``core_algos`` as a test oracle, imported without verl's top-level package (which needs GPUs and more).

verl 0.9.1 is installed test-only (``pip install --no-deps verl==0.9.1`` plus the ``verl-check`` extra: ray,
tensordict, codetiming, orjson; see ``.ci/run``). Its ``verl/__init__.py`` pulls in the whole trainer stack, so a stub
parent package whose ``__path__`` is the installed folder lets ``verl.trainer.ppo.core_algos`` import alone.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest
from omegaconf import OmegaConf


def load_core_algos() -> types.ModuleType:
    """Return ``verl.trainer.ppo.core_algos``, or skip the calling test with the reason verl is unavailable."""
    if "verl" not in sys.modules:
        spec = importlib.util.find_spec("verl")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("verl is not installed (pip install --no-deps verl==0.9.1 and the verl-check extra)")
        stub = types.ModuleType("verl")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["verl"] = stub
    try:
        return importlib.import_module("verl.trainer.ppo.core_algos")
    except ImportError as error:  # a dependency of the verl-check extra is missing
        pytest.skip(f"verl.trainer.ppo.core_algos does not import: {error}")


def actor_config(**overrides) -> object:
    """The fields of verl's ``ActorConfig`` its policy losses read, as an attribute-access mapping."""
    settings = {
        "clip_ratio": 0.2,
        "clip_ratio_low": 0.2,
        "clip_ratio_high": 0.2,
        "clip_ratio_c": 3.0,
        "global_batch_info": {},
        "policy_loss": {
            "clip_cov_ratio": 2e-4,
            "clip_cov_lb": 1.0,
            "clip_cov_ub": 5.0,
            "kl_cov_ratio": 2e-4,
            "ppo_kl_coef": 1.0,
        },
    }
    settings.update(overrides)
    return OmegaConf.create(settings)
