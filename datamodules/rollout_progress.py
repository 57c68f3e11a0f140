"""A collection's progress, turn by turn, on the Trainer's progress bar: the longest phase of an RL step, made visible.

``rollout: turn 7/20 · 41/64 active · 2,310 tok/s · 0 env errors``. On the global-zero rank only. When Lightning's
``RichProgressBar`` is showing, the line is a task of its display (one live display at a time is all Rich allows);
otherwise, as for the first rollout, which starts before the Trainer's bar, it is a display of its own that vanishes
when the collection ends. With the progress bar disabled (``enable_progress_bar: false``) nothing is shown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

from datamodules.rollout import TurnProgress
from epo_lightning.progress_display import transient_display


@contextmanager
def rollout_progress(trainer: Any, label: str, max_turns: int) -> Iterator[Callable[[TurnProgress], None] | None]:
    """Yield a reporter for ``collect_episodes(progress=...)``, or None where nothing is to be shown."""
    bar = getattr(trainer, "progress_bar_callback", None)
    if trainer is None or bar is None or not trainer.is_global_zero or not bar.is_enabled:
        yield None
        return
    shown = bar.progress if isinstance(bar, RichProgressBar) and bar.progress is not None else None
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with nullcontext(shown) if shown is not None else transient_display(*columns) as display:
        if display is None:
            yield None
            return
        task = display.add_task(f"{label}: starting", total=max_turns)

        def report(progress: TurnProgress) -> None:
            display.update(task, completed=progress.turn, description=progress.describe(label))
            if shown is not None:
                bar.refresh()

        try:
            yield report
        finally:
            display.remove_task(task)
