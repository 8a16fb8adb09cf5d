"""The zoom explorer's tile source: finer magnifications of an image generated where the user zooms in.

:class:`Explorer` turns one image at a magnification the model has (``--from``, e.g. 5x) into a Deep Zoom
pyramid that continues past the image's own pixels down to ``--to`` (default the model's finest level).
The HTTP side is :mod:`zoomldm.viewer.server` (``serve(image, generate=True, …)``); this module and its
parts own the pixels: geometry, blocks, the cache, the model worker and the consistency record.

The parts: :mod:`zoomldm.viewer.blocks` (geometry, blending, determinism, seam statistics),
:mod:`zoomldm.viewer.cache` (the disk cache and the consistency record), :mod:`zoomldm.viewer.worker` (the
model worker and its concurrency); here :class:`Explorer` (set-up, fingerprint, the served pixels and
tiles) and :func:`load_model`. Every name of those parts that the explorer's users need is importable
from here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..fsutil import atomic_path
from .blocks import (
    TILE_SIZE,
    Geometry,
    _mirror,
    block_seed,
    downsample2,
    feather,
    psnr,
    seam_statistics,
)
from .cache import FORMAT_VERSION, BlockCache, model_digest
from .worker import BlockError, BlockWorker

__all__ = [
    "FORMAT_VERSION",
    "TILE_SIZE",
    "BlockError",
    "Explorer",
    "Geometry",
    "block_seed",
    "downsample2",
    "feather",
    "load_model",
    "model_digest",
    "psnr",
    "seam_statistics",
]


class Explorer(BlockCache, BlockWorker):
    """Deep Zoom tiles of ``image`` at ``source`` and of the finer magnifications generated on request.

    Args:
        pipe: a :class:`~zoomldm.pipeline.ZoomLDMPipeline`.
        image: path or uint8 ``[H, W, 3]`` array at ``source``.
        source: the image's magnification (a level of the model, e.g. ``"5x"``).
        target: the finest level to generate (default the model's finest; must be finer than ``source``).
        cache: cache folder (default ``<image>.explore`` beside a path; required for an array).
        seed: sampling seed. window_patches, ring, tile_size, blend: :class:`Geometry`.
        model_id: identity of the model in the fingerprint (default :func:`model_digest`).
        memory_blocks: finished blocks kept in memory. name: the image's name on the page.
        **settings: super-resolution settings by CLI name (``t0``, ``stride``, ``inner_steps``,
            ``inversion_steps``, ``no_postprocess``, …; :data:`zoomldm.sampling.settings.OPTIONS`).

    Raises:
        InputError: the image is missing, damaged or not RGB. ConfigError: bad levels or settings.
    """

    def __init__(
        self,
        pipe,
        image: str | os.PathLike[str] | np.ndarray,
        source: str | int,
        target: str | int | None = None,
        *,
        cache: str | os.PathLike[str] | None = None,
        seed: int = 0,
        window_patches: int = 2,
        ring: int | None = None,
        tile_size: int = TILE_SIZE,
        blend: int | None = None,
        model_id: str | None = None,
        memory_blocks: int = 32,
        name: str | None = None,
        **settings: Any,
    ) -> None:
        from ..sampling.levels import parse_level
        from ..sampling.reference import read_image
        from ..sampling.settings import large_image_settings
        from ..sampling.superres import SRConfig

        self.pipe = pipe
        if isinstance(image, str | os.PathLike):
            self.image_path: Path | None = Path(image)
            self.image = read_image(self.image_path, what="image")
        else:
            self.image_path = None
            self.image = read_image(image, what="image")
        self.name = name or (self.image_path.name if self.image_path else "image")
        self.source = parse_level(pipe, source, "--from")
        self.target = parse_level(pipe, target, "--to") if target is not None else pipe.scales[0]
        if self.target.index >= self.source.index:
            raise ConfigError(
                f"--to {self.target.name} must be finer than --from {self.source.name} "
                f"(this model's levels: {', '.join(pipe.scales.names)})"
            )
        self.levels = [pipe.scales[i] for i in range(self.source.index, self.target.index - 1, -1)]
        for coarse, fine in zip(self.levels, self.levels[1:], strict=False):
            if not math.isclose(coarse.downsample / fine.downsample, 2.0):
                raise ConfigError(
                    f"levels {coarse.name} → {fine.name} are not a factor 2 apart; the explorer needs "
                    "one Deep Zoom level per magnification step"
                )
        height, width = self.image.shape[:2]
        patch = pipe.config.image_size
        self.geometry = Geometry(
            width, height, len(self.levels) - 1, patch, window_patches, ring, tile_size, blend
        )
        self.settings = large_image_settings(pipe, sampling_cls=SRConfig, **settings)
        self.seed = int(seed)
        self.model_id = model_id or model_digest(pipe)
        record = {
            "format": FORMAT_VERSION,
            "image_sha256": hashlib.sha256(self.image.tobytes()).hexdigest(),
            "image_shape": list(self.image.shape),
            "levels": [m.name for m in self.levels],
            "model": self.model_id,
            "settings": dataclasses.asdict(self.settings),
            "seed": self.seed,
            "geometry": dataclasses.asdict(self.geometry),
        }
        self.fingerprint = hashlib.sha256(
            json.dumps(record, sort_keys=True, default=str).encode()
        ).hexdigest()
        if cache is None:
            if self.image_path is None:
                raise ConfigError("cache= is required when the image is an array (a folder for the blocks)")
            cache = self.image_path.with_name(self.image_path.name + ".explore")
        self.cache_root = Path(cache)
        self.cache_dir = self.cache_root / self.fingerprint[:16]
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.cache_dir / "explorer.json") as tmp:
                tmp.write_text(json.dumps(record, indent=1, default=str))
        except OSError as err:
            raise ConfigError(
                f"--cache {self.cache_root}: cannot write there ({err.strerror}); pass another --cache"
            ) from err

        self.note: str | None = None  #: set by serve(): the line saying the embedded model is used
        self.generated = 0  #: blocks computed by this instance (0 after a restart over a full cache)
        self._lock = threading.Lock()
        self._json_lock = threading.Lock()
        self._pending: dict[tuple[int, int, int], Future] = {}
        self._queue: queue.Queue[tuple[int, int, int] | None] = queue.Queue()
        self._memory: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._memory_blocks = memory_blocks
        self._pyramid: dict[int, np.ndarray] = {self.geometry.image_level: self.image}
        self._running: dict[str, Any] | None = None
        self._durations: list[float] = []
        self._errors: list[str] = []
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="zoomldm-explorer", daemon=True)
        self._worker.start()

    # -- geometry helpers ------------------------------------------------------------------------------
    @property
    def max_level(self) -> int:
        return self.geometry.max_level

    def step_of(self, level: int) -> int:
        """Generated step of Deep Zoom ``level`` (≤ 0: a level of the image's own pixels)."""
        return level - self.geometry.image_level

    def blocks_for(self, step: int, x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int, int]]:
        """Blocks of ``step`` whose generations enter the served pixels of the box ``[x0, x1) × [y0, y1)``
        (inside the canvas): the blocks under it, and the neighbours whose blend zone reaches into it."""
        g = self.geometry
        b, e = g.block, g.blend
        cols, rows = g.step_blocks(step)
        return [
            (step, bx, by)
            for by in range(max(0, (y0 - e) // b), min(rows - 1, (y1 - 1 + e) // b) + 1)
            for bx in range(max(0, (x0 - e) // b), min(cols - 1, (x1 - 1 + e) // b) + 1)
        ]

    def tile_blocks(self, level: int, col: int, row: int) -> list[tuple[int, int, int]] | None:
        """Blocks a tile needs (empty for image levels), or None when the tile is outside the pyramid."""
        if not 0 <= level <= self.max_level:
            return None
        cols, rows = self.geometry.level_tiles(level)
        if not (0 <= col < cols and 0 <= row < rows):
            return None
        step = self.step_of(level)
        if step <= 0:
            return []
        x0, y0, x1, y1 = self._tile_box(level, col, row)
        return self.blocks_for(step, x0, y0, x1, y1)

    def _tile_box(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        t = self.geometry.tile_size
        w, h = self.geometry.level_size(level)
        return col * t, row * t, min((col + 1) * t, w), min((row + 1) * t, h)

    # -- pixels ----------------------------------------------------------------------------------------
    def _image_level(self, level: int) -> np.ndarray:
        from PIL import Image

        with self._lock:
            found = self._pyramid.get(level)
        if found is not None:
            return found
        w, h = self.geometry.level_size(level)
        array = np.asarray(Image.fromarray(self.image).resize((w, h), Image.Resampling.BOX))
        with self._lock:
            self._pyramid[level] = array
        return array

    def region(self, step: int, x0: int, y0: int, w: int, h: int, *, inline: bool = False) -> np.ndarray:
        """The served pixels ``[y0, y0+h) × [x0, x0+w)`` of generated step ``step`` (0 = the image), mirrored
        at the canvas edges: each pixel is the :func:`feather`-weighted sum of the generations of the blocks
        that cover it (one block inside a block, 2 across a border, 4 at a corner), rounded to uint8.
        ``inline``: compute missing blocks in this thread (the worker does), else wait for them through the
        worker."""
        g = self.geometry
        gw, gh = g.width << step, g.height << step
        ys = _mirror(np.arange(y0, y0 + h), gh)
        xs = _mirror(np.arange(x0, x0 + w), gw)
        if step == 0:
            return self.image[np.ix_(ys, xs)]
        b, m = g.block, g.margin
        cols, rows = g.step_blocks(step)
        out = np.zeros((h, w, 3), np.float64)
        for _, bx, by in self.blocks_for(
            step, int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        ):
            wy, wx = feather(ys, by, rows, b, g.blend), feather(xs, bx, cols, b, g.blend)
            sy, sx = wy > 0, wx > 0
            if not (sy.any() and sx.any()):
                continue
            key = (step, bx, by)
            generation = self._ensure(key) if inline else self.generation(*key)
            part = generation[np.ix_(ys[sy] - by * b + m, xs[sx] - bx * b + m)].astype(np.float64)
            out[np.ix_(sy, sx)] += wy[sy, None, None] * wx[None, sx, None] * part
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def tile_array(self, level: int, col: int, row: int, timeout: float | None = None) -> np.ndarray | None:
        """One tile as uint8 ``[h, w, 3]`` (None outside the pyramid); waits for missing blocks.

        Raises:
            TimeoutError: the blocks were not ready within ``timeout`` seconds (they keep generating).
            BlockError: generating a block failed.
        """
        keys = self.tile_blocks(level, col, row)
        if keys is None:
            return None
        x0, y0, x1, y1 = self._tile_box(level, col, row)
        if not keys:
            return self._image_level(level)[y0:y1, x0:x1]
        deadline = None if timeout is None else time.monotonic() + timeout
        futures = [self.request(*key) for key in keys]
        for future in futures:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                future.result(timeout=left)
            except FutureTimeout:
                raise TimeoutError("blocks still generating") from None
        return self.region(self.step_of(level), x0, y0, x1 - x0, y1 - y0)

    def tile_png(self, level: int, col: int, row: int, timeout: float | None = None) -> bytes | None:
        """:meth:`tile_array` encoded as PNG (lossless: the cached pixels, exactly)."""
        import io

        from PIL import Image

        array = self.tile_array(level, col, row, timeout=timeout)
        if array is None:
            return None
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    # -- status ----------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Sizes, levels and cache of this explorer (the page's ``info.json``)."""
        g = self.geometry
        return {
            "name": self.name,
            "width": g.width << g.steps,
            "height": g.height << g.steps,
            "image": {"width": g.width, "height": g.height, "magnification": self.source.name},
            "levels": [m.name for m in self.levels],
            "dzi_levels": {m.name: g.image_level + k for k, m in enumerate(self.levels)},
            "block": g.block,
            "ring": g.ring,
            "blend": g.blend,
            "seed": self.seed,
            "cache": str(self.cache_dir),
        }


def load_model(
    checkpoint: str | os.PathLike[str] | None = None,
    config: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
):
    """The explorer's model, by the package's one default-model rule
    (:func:`zoomldm.checkpoints.default_checkpoint`): ``checkpoint`` (model dir, official file or hub id)
    when given, else ``$ZOOMLDM_CHECKPOINT``, else the published model when cached or reachable, else the
    embedded offline model. Returns ``(pipe, note)``: ``note`` is the rule's one line when it fell back to the
    embedded model (else None). Super-resolution needs no SSL encoder, so none is loaded."""
    from ..checkpoints import default_checkpoint
    from ..pipeline import ZoomLDMPipeline

    notes: list[str] = []
    chosen = default_checkpoint(checkpoint, log=notes.append)
    pipe = ZoomLDMPipeline.from_pretrained(str(chosen), config=config, device=device, dtype=dtype)
    return pipe, (notes[0] if notes else None)
