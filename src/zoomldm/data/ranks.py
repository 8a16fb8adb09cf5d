"""How a prepare run is shared between ranks (see the design in :mod:`.prepare`).

This process's shard (:func:`rank_and_world`, also used by ``zoomldm features``), the setup run by rank 0
first, and rank 0's commit of every rank's resolved slides in slide order, with the per-slide line or
callback when a slide is resolved.
"""

from __future__ import annotations

import contextlib
import os

import torch

from ..errors import ZoomLDMError
from .prepare_settings import SlideReport
from .store import delete_part, part_status
from .workers import ProgressBars


# -- ranks --------------------------------------------------------------------------------------------
def rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else ``RANK`` / ``WORLD_SIZE`` from the environment (torchrun, accelerate launch)."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    if not 0 <= rank < world:
        raise ZoomLDMError(f"rank {rank} is outside 0..{world - 1}")
    return rank, world


def _main_process_first(world: int) -> contextlib.AbstractContextManager:
    if world == 1:
        return contextlib.nullcontext()
    from accelerate import PartialState

    # accelerate only sets up a CPU process group (gloo) when told to run on CPU
    return PartialState(cpu=not torch.cuda.is_available()).main_process_first()


class _Committer:
    """Rank 0's ordered commit of resolved slides (see :class:`~.store.StoreWriter`)."""

    def __init__(self, root, writer, sources, reports, run, is_main, log, on_slide_done) -> None:
        self.root, self.writer, self.sources, self.reports = root, writer, sources, reports
        self.run, self.is_main, self.log, self.on_slide_done = run, is_main, log, on_slide_done
        self.position = 0
        self.bars: ProgressBars | None = None

    @property
    def finished(self) -> bool:
        return self.position >= len(self.sources)

    def advance(self) -> None:
        """Commit every slide, in order, up to the first one that is not resolved yet."""
        if not self.is_main:
            return
        while not self.finished:
            source = self.sources[self.position]
            report = self.reports[source.id]
            if self.writer.is_committed(source.id):
                delete_part(self.root, source.id)  # left over by a crash right after its commit
            else:
                status, attrs = part_status(self.root, source.id)
                if status == "complete":
                    report.counts = self.writer.commit(self.root[f"_parts/{source.id}"])
                    report.status = "committed"
                    delete_part(self.root, source.id)
                elif status == "failed" and attrs.get("run") == self.run:
                    report.status, report.error = "failed", str(attrs.get("error", ""))
                else:
                    return
                _notify(report, self.log, self.on_slide_done, self.bars)
            self.position += 1


def _notify(report: SlideReport, log, on_slide_done, bars: ProgressBars | None = None) -> None:
    if log is not None:
        if report.status == "failed":
            line = f"{report.id}: FAILED {report.error}"
        else:
            line = f"{report.id}: " + ", ".join(f"{k} {v}" for k, v in report.counts.items())
        if bars is not None and bars.active:
            bars.print(line)  # above the bars
        else:
            log(line)
    if on_slide_done is not None:
        on_slide_done(report)
