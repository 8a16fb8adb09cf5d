"""The zoom explorer's model worker: one thread that generates the blocks requested, and its status.

:class:`BlockWorker` is the part of :class:`~zoomldm.viewer.explorer.Explorer` that queues block requests,
runs the model (:meth:`~zoomldm.pipeline.ZoomLDMPipeline.super_resolve`) in the worker thread and reports
progress; it uses the attributes the explorer sets up (``pipe``, ``settings``, ``seed``, the queue, the
locks, the pending futures) and the cache (:class:`~zoomldm.viewer.cache.BlockCache`).

**Concurrency.** One worker thread runs the model; HTTP threads only read finished blocks or ask for
missing ones. A request for a block joins the pending request for it when there is one, so concurrent
requests compute a block once. Parent blocks are computed inline by the worker (levels strictly decrease:
no cycle). While a block is generating, finished tiles are served from the cache without waiting.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any

import numpy as np

from ..errors import InputError
from .blocks import block_seed


class BlockError(RuntimeError):
    """Generating a block failed (the model raised); the message says which block and why."""


class BlockWorker:
    """Block requests and the model worker of an :class:`~zoomldm.viewer.explorer.Explorer`."""

    # -- the worker ------------------------------------------------------------------------------------
    def request(self, step: int, bx: int, by: int) -> Future:
        """A future of block ``(bx, by)`` of ``step``: done at once when cached, else queued once."""
        key = (step, bx, by)
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None:
                return pending
        if self.block_path(*key).is_file() or key in self._memory:
            done: Future = Future()
            done.set_result(None)
            return done
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = Future()
                self._queue.put(key)
            return pending

    def block(self, step: int, bx: int, by: int, timeout: float | None = None) -> np.ndarray:
        """The served (blended) pixels of block ``(bx, by)``'s footprint (``B × B``, mirrored past the canvas)
        of generated ``step`` (1 = first generated level); missing blocks are computed by the worker."""
        g = self.geometry
        for key in self.blocks_for(step, bx * g.block, by * g.block, (bx + 1) * g.block, (by + 1) * g.block):
            self.generation(*key, timeout=timeout)
        return self.region(step, bx * g.block, by * g.block, g.block, g.block)

    def generation(self, step: int, bx: int, by: int, timeout: float | None = None) -> np.ndarray:
        """Block ``(bx, by)``'s whole generation (``2·window`` px: its footprint + ``2·ring`` px on every side)
        of generated ``step``, as cached; computed by the worker when missing."""
        cols, rows = self.geometry.step_blocks(step)
        if not (1 <= step < len(self.levels) and 0 <= bx < cols and 0 <= by < rows):
            raise InputError(f"block {step}/{bx}_{by} is outside the pyramid ({len(self.levels) - 1} steps)")
        found = self._read_block((step, bx, by))
        if found is not None:
            return found
        self.request(step, bx, by).result(timeout=timeout)
        found = self._read_block((step, bx, by))
        if found is None:
            raise BlockError(f"block {step}/{bx}_{by} vanished from the cache {self.cache_dir}")
        return found

    def _work(self) -> None:
        while True:
            key = self._queue.get()
            if key is None:
                return
            with self._lock:
                future = self._pending.get(key)
            if self._closed:
                with self._lock:
                    self._pending.pop(key, None)
                if future is not None and not future.done():
                    future.set_exception(BlockError("the explorer was closed"))
                continue
            try:
                self._ensure(key)
            except BaseException as err:  # noqa: BLE001 — reported to the waiting request, never lost
                message = f"block {self.levels[key[0]].name} {key[1]}_{key[2]}: {type(err).__name__}: {err}"
                with self._lock:
                    self._errors.append(message)
                    self._pending.pop(key, None)
                if future is not None and not future.done():
                    future.set_exception(BlockError(message))
                continue
            self._resolve(key)

    def _resolve(self, key: tuple[int, int, int]) -> None:
        """Mark a pending request of ``key`` done (it may have been computed inline, as a parent)."""
        with self._lock:
            future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _ensure(self, key: tuple[int, int, int]) -> np.ndarray:
        """Block ``key``'s whole generation from the cache, or generated now in this thread (the worker)."""
        found = self._read_block(key)
        if found is not None:
            return found
        step, bx, by = key
        g = self.geometry
        half = g.block // 2
        parent = self.region(
            step - 1, bx * half - g.ring, by * half - g.ring, g.window, g.window, inline=True
        )
        with self._lock:
            self._running = {"level": self.levels[step].name, "block": [bx, by], "since": time.monotonic()}
        start = time.perf_counter()
        try:
            window = self._generate(step, bx, by, parent)
        finally:
            with self._lock:
                self._running = None
        seconds = time.perf_counter() - start
        window = np.ascontiguousarray(window)
        self._write_block(key, window, parent[g.ring : g.ring + half, g.ring : g.ring + half], seconds)
        with self._lock:
            self.generated += 1
            self._durations.append(seconds)
        self._resolve(key)
        return window

    def _generate(self, step: int, bx: int, by: int, parent: np.ndarray) -> np.ndarray:
        """Super-resolve one parent window (uint8 ``[window, window, 3]``) one level finer."""
        s = self.settings
        result = self.pipe.super_resolve(
            parent,
            self.levels[step - 1],
            self.levels[step],
            config=s.sampling,
            postprocess=s.postprocess if s.postprocess is not None else False,
            decode=s.decode,
            inversion=s.inversion,
            seed=block_seed(self.seed, step, bx, by),
            resume=False,
            progress=False,
        )
        window = np.asarray(result.image)
        expected = (2 * self.geometry.window, 2 * self.geometry.window, 3)
        if window.shape != expected:
            raise BlockError(f"super-resolution returned {window.shape}, expected {expected}")
        return window

    # -- status ----------------------------------------------------------------------------------------
    def progress(self) -> dict[str, Any]:
        """What the worker is doing: queued blocks, the running one (elapsed), mean seconds per block."""
        with self._lock:
            running = dict(self._running) if self._running else None
            pending = len(self._pending)
            durations = list(self._durations)
            errors = self._errors[-5:]
        if running:
            running["elapsed_s"] = round(time.monotonic() - running.pop("since"), 2)
        return {
            "pending": pending,
            "running": running,
            "generated": len(durations),
            "mean_block_s": round(float(np.mean(durations)), 3) if durations else None,
            "errors": errors,
        }

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker: the block it is computing is finished and cached (waited for up to
        ``timeout`` seconds, default as long as it takes), queued ones are dropped."""
        self._closed = True
        if self._worker.is_alive():
            self._queue.put(None)
            self._worker.join(timeout=timeout)
