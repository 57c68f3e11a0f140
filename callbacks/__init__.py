"""The control plane: callbacks that set the entropy reference and the phase weight of the EPO objective."""

from callbacks.entropy_history import EntropyHistory
from callbacks.phase_scheduler import PhaseScheduler

__all__ = ["EntropyHistory", "PhaseScheduler"]
