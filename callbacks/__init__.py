"""The control plane: entropy reference, phase weight, entropy coefficient; pictures of the entropy; export."""

from callbacks.adaptive_entropy_coef import AdaptiveEntropyCoef
from callbacks.entropy_history import EntropyHistory
from callbacks.entropy_plots import EntropyPlots
from callbacks.export_policy import ExportPolicy
from callbacks.phase_scheduler import PhaseScheduler

__all__ = ["AdaptiveEntropyCoef", "EntropyHistory", "EntropyPlots", "ExportPolicy", "PhaseScheduler"]
