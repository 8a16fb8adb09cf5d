"""The base class of every slide / image reader backend, and the quieting of tifffile while one works.

:class:`SlideReader` holds what all backends share: level-0 coordinates, reads from the nearest finer
pyramid level resampled with an antialiased filter of :data:`RESAMPLING`, unreadable tiles reported as
:class:`~zoomldm.errors.InputError`. :func:`_quiet_tifffile` holds back tifffile's damaged-file log lines
while a backend opens or reads (thread-local).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from ..errors import InputError, ZoomLDMError
from ..io.images import decode_error_reason
from .resolution import Resolution

#: Filters accepted for resizing (all of PIL's resize filters are antialiased when downsampling).
RESAMPLING = {
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "hamming": Image.Resampling.HAMMING,
}


class SlideReader:
    """Base class: a multi-resolution image with level-0 coordinates (OpenSlide's conventions).

    Subclasses set ``level_dimensions`` (``(width, height)`` per level, level 0 first),
    ``level_downsamples`` and ``metadata_resolution``, and implement :meth:`_read_level`.
    """

    backend: ClassVar[str] = ""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.level_dimensions: list[tuple[int, int]] = []
        self.level_downsamples: list[float] = []
        self.metadata_resolution: Resolution | None = None
        self.resolution_override: Resolution | None = None

    # -- what a backend implements -------------------------------------------------------------------
    def _read_level(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """``uint8 [height, width, 3]`` of ``level``; (x0, y0) is the top-left corner in level-0 px."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file handle."""

    # -- shared logic ----------------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def resolution(self) -> Resolution | None:
        """The override when one is set, else the metadata's resolution (or ``None``)."""
        return self.resolution_override or self.metadata_resolution

    def best_level(self, downsample: float) -> int:
        """The coarsest level that is still at least as fine as ``downsample`` (nearest finer level)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-6):
                best = i if ds >= self.level_downsamples[best] else best
        return best

    def read(
        self,
        x: float,
        y: float,
        width: float,
        height: float,
        out_size: tuple[int, int],
        resample: str = "lanczos",
    ) -> np.ndarray:
        """Region ``(x, y, width, height)`` in level-0 px, resampled to ``out_size = (w, h)``.

        Reads the nearest finer pyramid level and resizes with an antialiased filter, so the result does
        not depend on which levels a file happens to contain beyond resampling rounding.
        """
        out_w, out_h = out_size
        level = self.best_level(min(width / out_w, height / out_h))
        ds = self.level_downsamples[level]
        lw_max, lh_max = self.level_dimensions[level]
        lx, ly = int(round(x / ds)), int(round(y / ds))
        lw, lh = max(1, int(round(width / ds))), max(1, int(round(height / ds)))
        if lx < 0 or ly < 0 or lx >= lw_max or ly >= lh_max:
            raise ZoomLDMError(f"{self.name}: region ({x}, {y}, {width}, {height}) lies outside the image")
        x0, y0 = int(round(lx * ds)), int(round(ly * ds))
        try:
            with _quiet_tifffile():
                pixels = self._read_level(level, x0, y0, min(lw, lw_max - lx), min(lh, lh_max - ly))
        except ZoomLDMError:
            raise
        except Exception as err:  # OpenSlideError, imagecodecs' Jpeg8Error, ValueError, OSError, ...
            raise InputError(
                f"{self.path}: unreadable tile at level {level} ({x0}, {y0}) (level-0 px): "
                f"{decode_error_reason(err)}; re-export or re-copy the file"
            ) from err
        if pixels.shape[:2] != (lh, lw):  # a rounding pixel past the edge: pad with background (white)
            pixels = np.pad(
                pixels, ((0, lh - pixels.shape[0]), (0, lw - pixels.shape[1]), (0, 0)), constant_values=255
            )
        if (lw, lh) == (out_w, out_h):
            return pixels
        return np.asarray(Image.fromarray(pixels).resize((out_w, out_h), RESAMPLING[resample]))

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """The whole image with its longer side at most ``max_side`` px."""
        w, h = self.dimensions
        f = max(w, h) / max_side
        return self.read(0, 0, w, h, (max(1, round(w / f)), max(1, round(h / f))) if f > 1 else (w, h))

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, levels={self.level_dimensions}, resolution={self.resolution})"


class _WhileQuiet(logging.Filter):
    """Drops tifffile's records in a thread inside :func:`_quiet_tifffile` (thread-local, so parallel
    readers never change each other's logging)."""

    state = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.state, "quiet", False)


_TIFFFILE_FILTER = _WhileQuiet()


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """tifffile logs damaged-file warnings ("invalid page offset") to stderr; the error we raise says it in
    one line, so they are held back while a backend opens or reads (errors still propagate)."""
    logger = logging.getLogger("tifffile")
    if _TIFFFILE_FILTER not in logger.filters:
        logger.addFilter(_TIFFFILE_FILTER)
    previous = getattr(_WhileQuiet.state, "quiet", False)
    _WhileQuiet.state.quiet = True
    try:
        yield
    finally:
        _WhileQuiet.state.quiet = previous
