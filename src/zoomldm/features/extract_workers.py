"""The slides of a ``zoomldm features`` run extracted and written one after another in this process, or
spread over ``settings.workers`` spawned worker processes (as ``prepare`` does); a slide that fails is
returned with its reason, not raised (see :mod:`.extract`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from .bags import BAG_SUFFIX, write_bag
from .feature_settings import FeatureSettings
from .slide_features import extract_slide


def _extract_one(
    source: Any, out: Path, pipe: Any, encoder: Any, settings: FeatureSettings, progress
) -> tuple[int, str]:
    """Extract and write one slide: ``(tiles, "")`` or ``(0, error message)``."""
    try:
        result = extract_slide(
            source.path, source.id, pipe, encoder, settings, mpp=source.mpp, progress=progress
        )
        write_bag(out / f"{source.id}{BAG_SUFFIX}", result.features, result.coords, result.attrs)
        return len(result.features), ""
    except Exception as err:  # any slide-level failure is reported by name; the run goes on
        from ..data.extract import describe_failure

        return 0, describe_failure(err)


def _run(todo, out, pipe, encoder, settings, tick) -> Iterator[tuple[Any, tuple[int, str]]]:
    """In-process, or spread over ``settings.workers`` spawned processes (as ``prepare`` does)."""
    if settings.workers <= 1 or len(todo) <= 1:
        for source in todo:
            yield source, _extract_one(source, out, pipe, encoder, settings, tick)
        return
    import torch.multiprocessing as mp

    device = str(pipe.device)
    threads = max(1, (os.cpu_count() or 1) // settings.workers)
    pipe.to("cpu")
    encoder.to("cpu")
    init = (out, pipe, encoder, settings, device, threads)
    try:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(
            settings.workers, mp_context=ctx, initializer=_init_worker, initargs=init
        ) as pool:
            futures: dict[Future, Any] = {pool.submit(_work, s): s for s in todo}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield futures[future], future.result()
    finally:
        pipe.to(device)
        encoder.to(device)


_WORKER: dict[str, Any] = {}


def _init_worker(out, pipe, encoder, settings, device, threads) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER.update(out=out, pipe=pipe.to(device), encoder=encoder.to(device), settings=settings)


def _work(source: Any) -> tuple[int, str]:
    w = _WORKER
    return _extract_one(source, w["out"], w["pipe"], w["encoder"], w["settings"], None)
