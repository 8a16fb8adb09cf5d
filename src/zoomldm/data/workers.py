"""Running :func:`~.extract.process_slide` over a list of slides: in-process or in worker processes.

Each worker process gets its own copy of the models (sent once, through the executor's initializer)
and works on whole slides; progress events come back through a queue to the rich bars of the main
process. A slide that raises is recorded as failed (by name, with the error) and the run goes on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from ..errors import ZoomLDMError
from ..models.encoders import SSLEncoder
from .extract import ExtractionSettings, SlideSource, describe_failure, process_slide
from .store import fail_part, open_store


def run_slides(
    todo: list[SlideSource],
    root: Any,
    url: str,
    extraction: ExtractionSettings,
    encoder: SSLEncoder,
    vae: torch.nn.Module,
    workers: int,
    bars: ProgressBars,
    run: int,
) -> Iterator[tuple[SlideSource, str | None]]:
    """Turn each slide into its part; yields ``(slide, None)`` or ``(slide, error message)`` as each finishes.

    ``workers > 1`` starts that many spawned processes (models moved to CPU for the transfer, back to
    their device in each worker and here afterwards); ``run`` is stamped on failure records.
    """
    if workers <= 1 or len(todo) <= 1:
        for source in todo:
            yield source, _process_one(source, root, extraction, encoder, vae, bars.update, run)
        return
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    device = str(next(vae.parameters()).device)
    threads = max(1, (os.cpu_count() or 1) // workers)
    cpu_encoder = SSLEncoder(
        **{**encoder.__dict__, "model": encoder.model.cpu(), "device": torch.device("cpu")}
    )
    init = (url, extraction, cpu_encoder, vae.cpu(), device, threads, queue, run)
    try:
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=init)
        try:
            futures: dict[Future, SlideSource] = {pool.submit(_work, s): s for s in todo}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(queue, bars)
                for future in done:
                    yield futures[future], future.result()
        except BrokenProcessPool:
            raise ZoomLDMError(
                "a worker process died (out of memory?); finished slides are kept, rerun to resume"
            ) from None
        finally:  # on Ctrl-C or an error: drop queued slides instead of finishing them
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        encoder.to(device)
        vae.to(device)


def _drain(queue: Any, bars: ProgressBars) -> None:
    import queue as queue_module

    while True:
        try:
            bars.update(*queue.get_nowait())
        except queue_module.Empty:
            return


def _process_one(source, root, extraction, encoder, vae, progress, run) -> str | None:
    try:
        process_slide(source, root, extraction, encoder, vae, progress)
        return None
    except Exception as err:  # any slide-level failure is recorded by name; the run goes on
        message = describe_failure(err)
        fail_part(root, source.id, message, run)
        return message


_WORKER: dict[str, Any] = {}


def _init_worker(url, extraction, encoder, vae, device, threads, queue, run) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(
        root=open_store(url, mode="r+"),
        extraction=extraction,
        encoder=encoder.to(device),
        vae=vae.to(device),
        queue=queue,
        run=run,
    )


def _work(source: SlideSource) -> str | None:
    w = _WORKER
    return _process_one(
        source, w["root"], w["extraction"], w["encoder"], w["vae"], lambda *a: w["queue"].put(a), w["run"]
    )


class ProgressBars:
    """Rich progress: one bar for this rank's slides, one per slide being processed."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        from ..progress import make_progress, progress_enabled

        self.active = progress_enabled(enabled)
        self._progress = make_progress() if self.active else None
        self._total, self._done = total, done
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressBars:
        if self._progress is not None:
            self._progress.__enter__()
            self._slides = self._progress.add_task("slides", total=self._total, completed=self._done)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, slide: str, done: int, total: int) -> None:
        if self._progress is None:
            return
        if slide not in self._tasks:
            self._tasks[slide] = self._progress.add_task(f"  {slide} (tiles)", total=total)
        self._progress.update(self._tasks[slide], completed=done, total=total)

    def slide_finished(self, slide: str) -> None:
        if self._progress is None:
            return
        if slide in self._tasks:
            self._progress.remove_task(self._tasks.pop(slide))
        self._progress.advance(self._slides)

    def print(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
