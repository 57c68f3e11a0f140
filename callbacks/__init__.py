"""The control plane: callbacks that set the entropy reference, the phase weight and the entropy coefficient."""

from callbacks.adaptive_entropy_coef import AdaptiveEntropyCoef
from callbacks.entropy_history import EntropyHistory
from callbacks.phase_scheduler import PhaseScheduler

__all__ = ["AdaptiveEntropyCoef", "EntropyHistory", "PhaseScheduler"]
