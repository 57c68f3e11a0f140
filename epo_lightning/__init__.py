"""epo-lightning: Entropy-regularized Policy Optimization (arXiv 2509.22576) for multi-turn LLM agents on Lightning."""

from epo_lightning.losses import EPOLossConfig, EPOStats, epo_loss
from epo_lightning.module import EPOModule
from epo_lightning.tiny_preset import TinyPreset

__all__ = ["EPOLossConfig", "EPOModule", "EPOStats", "TinyPreset", "epo_loss"]
