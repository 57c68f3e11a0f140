"""Read the scalars a run logged to TensorBoard (for benchmarks, tests and notebooks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator, ScalarEvent


def _events(log_dir: str | Path) -> Iterator[tuple[str, list[ScalarEvent]]]:
    """``(tag, events)`` for every scalar tag of every event file under ``log_dir``, files in name order."""
    for events in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            yield tag, accumulator.Scalars(tag)


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag under ``log_dir`` (searched recursively) as ``(step, value)`` pairs in logging order."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for tag, events in _events(log_dir):
        scalars.setdefault(tag, []).extend((e.step, e.value) for e in events)
    return scalars


def read_wall_times(log_dir: str | Path, tag: str) -> list[float]:
    """The wall-clock times (seconds since 1970) when ``tag`` was logged under ``log_dir``, in logging order."""
    return [e.wall_time for name, events in _events(log_dir) if name == tag for e in events]
