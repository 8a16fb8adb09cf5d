"""The multi-scale sample layout of one slide, exactly as SPEC §1 defines it.

All coordinates are in **base pixels**: the slide resampled to the domain's base resolution (20x ≙
0.5 µm/px for pathology; the image's native resolution for satellite, unless a base resolution is
given). One base pixel is ``scale`` level-0 pixels, chosen from the slide's µm/px — never from its
pyramid levels or objective-power string.

The base image is cut into non-overlapping 256-px **base tiles** (row, col). A sample of level k
covers a ``2^k × 2^k`` block of base tiles aligned to multiples of ``2^k`` (so a 2.5x region holds
exactly four 5x regions, as the deep-zoom tiler the authors used produces), i.e. ``256·2^k`` base
pixels, resized to 256² with an antialiased filter. Its SSL grid is the ``2^k × 2^k`` embeddings of
the base tiles it covers, which are computed once per slide and shared by every level.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ZoomLDMError
from ..scales import Magnification
from .readers import SlideReader
from .tissue import content_mask, tile_fractions, tissue_mask

TILE = 256
#: thumbnail pixels per base tile side used for the content mask (16 µm/px at 20x)
THUMB_CELLS = 8
#: a slide may be this much coarser than the base resolution (0.5 µm/px vs 0.52) before it is refused
UPSAMPLE_TOLERANCE = 0.05


@dataclass(frozen=True)
class BaseGrid:
    """Base-resolution tiling of one slide: ``scale`` level-0 px per base px."""

    scale: float
    base_mpp: float
    width: int
    height: int
    tile: int = TILE

    @property
    def rows(self) -> int:
        return self.height // self.tile

    @property
    def cols(self) -> int:
        return self.width // self.tile

    def level0_box(self, row: int, col: int, span: int) -> tuple[float, float, float]:
        """``(x, y, size)`` in level-0 px of the ``span × span`` tile block whose top-left tile is (row, col)."""
        side = self.tile * self.scale
        return col * side, row * side, span * side


def base_grid(reader: SlideReader, level0_mpp: float, base_mpp: float | None, tile: int = TILE) -> BaseGrid:
    """The base tiling of ``reader`` at ``base_mpp`` (``None``: the native resolution).

    Raises:
        ZoomLDMError: the slide is coarser than the base resolution (it would have to be upsampled).
    """
    base = level0_mpp if base_mpp is None else float(base_mpp)
    scale = base / level0_mpp
    if scale < 1 - UPSAMPLE_TOLERANCE:
        raise ZoomLDMError(
            f"{reader.name}: its resolution {level0_mpp:g}/px is coarser than the base {base:g}/px "
            "(base tiles would be upsampled); use slides scanned at the base magnification or finer"
        )
    w0, h0 = reader.dimensions
    return BaseGrid(scale=scale, base_mpp=base, width=int(w0 / scale), height=int(h0 / scale), tile=tile)


@dataclass
class SlidePlan:
    """Which samples of each level a slide yields and which base tiles they need."""

    grid: BaseGrid
    levels: tuple[Magnification, ...]
    #: fraction of each base tile that is tissue / valid data, ``[rows, cols]``
    content: np.ndarray
    #: per level index: ``[n, 2]`` int64 (row, col) of each region's top-left base tile, row-major order
    regions: dict[int, np.ndarray]

    def tiles_needed(self) -> np.ndarray:
        """``[rows, cols]`` bool: the base tiles covered by at least one kept region of any level."""
        needed = np.zeros((self.grid.rows, self.grid.cols), dtype=bool)
        for mag in self.levels:
            span = mag.grid_size
            for r, c in self.regions[mag.index]:
                needed[r : r + span, c : c + span] = True
        return needed

    def counts(self) -> dict[str, int]:
        return {mag.name: len(self.regions[mag.index]) for mag in self.levels}


def content_fractions(reader: SlideReader, grid: BaseGrid, domain: str) -> np.ndarray:
    """Per-base-tile content fraction from a thumbnail aligned to the tile grid (``THUMB_CELLS`` px/tile)."""
    if grid.rows == 0 or grid.cols == 0:
        return np.zeros((grid.rows, grid.cols), dtype=np.float32)
    x, y, _ = grid.level0_box(0, 0, 1)
    side = grid.tile * grid.scale
    thumb = reader.read(
        x, y, grid.cols * side, grid.rows * side, (grid.cols * THUMB_CELLS, grid.rows * THUMB_CELLS), "box"
    )
    mask = tissue_mask(thumb) if domain == "pathology" else content_mask(thumb)
    return tile_fractions(mask, grid.rows, grid.cols)


def plan_slide(
    reader: SlideReader,
    grid: BaseGrid,
    levels: Sequence[Magnification],
    threshold: float | Sequence[float],
    content: np.ndarray | None = None,
) -> SlidePlan:
    """Choose the regions of every level whose mean content fraction reaches ``threshold``.

    Args:
        threshold: one value for all levels or one per level (a lower one for the large, low-power
            regions is common: the authors advise "a lower tissue threshold for larger images").
            0 keeps every complete region.
        content: precomputed tile fractions (default: :func:`content_fractions` of the slide's domain).
    """
    levels = tuple(levels)
    thresholds = [float(threshold)] * len(levels) if np.isscalar(threshold) else [float(t) for t in threshold]
    if len(thresholds) != len(levels):
        raise ZoomLDMError(f"got {len(thresholds)} tissue thresholds for {len(levels)} levels")
    if content is None:
        content = content_fractions(reader, grid, levels[0].domain)
    regions: dict[int, np.ndarray] = {}
    for mag, thr in zip(levels, thresholds, strict=True):
        span = mag.grid_size
        n_r, n_c = grid.rows // span, grid.cols // span
        if n_r == 0 or n_c == 0:
            regions[mag.index] = np.zeros((0, 2), dtype=np.int64)
            continue
        block = content[: n_r * span, : n_c * span].reshape(n_r, span, n_c, span).mean(axis=(1, 3))
        keep = np.argwhere(block >= thr) if thr > 0 else np.argwhere(np.ones_like(block, dtype=bool))
        regions[mag.index] = (keep * span).astype(np.int64)
    return SlidePlan(grid=grid, levels=levels, content=content, regions=regions)


def read_region(
    reader: SlideReader,
    grid: BaseGrid,
    row: int,
    col: int,
    span: int,
    out: int = TILE,
    resample: str = "lanczos",
) -> np.ndarray:
    """uint8 ``[out, out, 3]`` image of the ``span × span`` base-tile block at (row, col)."""
    x, y, size = grid.level0_box(row, col, span)
    return reader.read(x, y, size, size, (out, out), resample)
