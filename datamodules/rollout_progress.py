"""A collection's progress, turn by turn, on the Trainer's progress bar: the longest phase of an RL step, made visible.

``rollout: turn 7/20 · 41/64 active · 2,310 tok/s · 0 env errors``. On the global-zero rank only. When Lightning's
``RichProgressBar`` is showing, the line is a task of its display (one live display at a time is all Rich allows);
otherwise, as for the first rollout, which starts before the Trainer's bar, it is a display of its own that vanishes
when the collection ends. With the progress bar disabled (``enable_progress_bar: false``) nothing is shown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from rich.errors import LiveError
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from datamodules.rollout import TurnProgress


@contextmanager
def rollout_progress(trainer: Any, label: str, max_turns: int) -> Iterator[Callable[[TurnProgress], None] | None]:
    """Yield a reporter for ``collect_episodes(progress=...)``, or None where nothing is to be shown."""
    bar = getattr(trainer, "progress_bar_callback", None)
    if trainer is None or bar is None or not trainer.is_global_zero or not bar.is_enabled:
        yield None
        return
    shown = bar.progress if isinstance(bar, RichProgressBar) and bar.progress is not None else None
    own = shown is None
    if own:
        shown = Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True)
        try:
            shown.start()
        except LiveError:  # another live display is on: stay quiet rather than fight it
            yield None
            return
    task = shown.add_task(f"{label}: starting", total=max_turns)

    def report(progress: TurnProgress) -> None:
        shown.update(task, completed=progress.turn, description=progress.describe(label))
        if not own:
            bar.refresh()

    try:
        yield report
    finally:
        shown.remove_task(task)
        if own:
            shown.stop()
