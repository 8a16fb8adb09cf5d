"""Progress bars (rich) for every long loop; quiet when stderr is not a terminal unless forced.

``ZOOMLDM_PROGRESS=1`` forces bars on (e.g. in a log file), ``ZOOMLDM_PROGRESS=0`` turns them off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def progress_enabled(requested: bool = True) -> bool:
    env = os.environ.get("ZOOMLDM_PROGRESS")
    if env is not None:
        return env not in {"0", "false", "no"} and requested
    return requested and sys.stderr.isatty()


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def track(
    iterable: Iterable[T], description: str, total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    """Iterate with a progress bar (a no-op wrapper when disabled)."""
    if not progress_enabled(enabled):
        yield from iterable
        return
    with make_progress() as bar:
        task = bar.add_task(description, total=total if total is not None else _len(iterable))
        for item in iterable:
            yield item
            bar.advance(task)


def _len(iterable: Iterable) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None
