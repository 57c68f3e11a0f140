"""epo-lightning: Entropy-regularized Policy Optimization (arXiv 2509.22576) for multi-turn LLM agents on Lightning.

The names below load on first use, so importing a light part of the package (``epo_lightning.errors``,
``epo_lightning.losses``) from an environment worker does not import Lightning or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EPOLossConfig": "epo_lightning.losses",
    "EPOStats": "epo_lightning.losses",
    "epo_loss": "epo_lightning.losses",
    "EPOModule": "epo_lightning.module",
    "TinyPreset": "epo_lightning.tiny_preset",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'epo_lightning' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
