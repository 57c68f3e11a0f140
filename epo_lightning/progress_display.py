"""A Rich progress display of its own, for work that runs outside the Trainer's progress bar."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.errors import LiveError
from rich.progress import Progress, ProgressColumn


@contextmanager
def transient_display(*columns: str | ProgressColumn) -> Iterator[Progress | None]:
    """A started ``Progress`` that vanishes when the block ends; None while another live display is on.

    Rich allows one live display at a time; a second would raise, so the work goes on without a bar instead. It
    draws on stderr, as progress bars do, so that the output a script prints (a table, a config) stays clean when
    piped: on stdout, a non-terminal console leaves an empty line where the bar was.
    """
    display = Progress(*columns, transient=True, console=Console(stderr=True))
    try:
        display.start()
    except LiveError:
        yield None
        return
    try:
        yield display
    finally:
        display.stop()
