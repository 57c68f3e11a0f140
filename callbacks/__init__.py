"""The control plane: entropy reference, phase weight, entropy coefficient, and the export of the trained policy."""

from callbacks.adaptive_entropy_coef import AdaptiveEntropyCoef
from callbacks.entropy_history import EntropyHistory
from callbacks.export_policy import ExportPolicy
from callbacks.phase_scheduler import PhaseScheduler

__all__ = ["AdaptiveEntropyCoef", "EntropyHistory", "ExportPolicy", "PhaseScheduler"]
