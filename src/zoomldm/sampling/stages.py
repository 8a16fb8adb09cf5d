"""The geometry of a large-image request, before any model work: scale pairs, stages and regions.

:class:`LargeImagePlan` is one validated scale pair (guide and target levels, the tile canvas under the
guide, the requested region); :func:`plan_large_image` checks one pair, :func:`plan_stages` gives the
stages of a request (one pair, or a cascade of two when the ratio is too large), and
:func:`coarse_request` the coarse canvas and cascade of a request past one guide patch (:mod:`.coarse`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError, InputError
from ..scales import Magnification
from .coarse import coarse_canvas_needed
from .footprints import MIN_FOOTPRINT, scale_ratio
from .levels import parse_level, require_level


@dataclass(frozen=True)
class LargeImagePlan:
    """Validated geometry: the scale pair, the tile canvas under the guide and the requested region."""

    guide: Magnification
    target: Magnification
    k: int
    tile_px: int
    canvas_rows: int  # tiles under the whole guide
    canvas_cols: int
    row0: int = 0  # requested region, in tiles
    col0: int = 0
    rows: int = 0
    cols: int = 0

    @property
    def tile_ids(self) -> list[int]:
        return [
            (self.row0 + r) * self.canvas_cols + self.col0 + c
            for r in range(self.rows)
            for c in range(self.cols)
        ]

    @property
    def height(self) -> int:
        return self.rows * self.tile_px

    @property
    def width(self) -> int:
        return self.cols * self.tile_px

    def grid_crop(self, base_grid: torch.Tensor) -> torch.Tensor:
        """The part of a canvas-wide base grid under the region."""
        from ..io.grids import crop_grid

        g = self.target.grid_size
        r0, c0 = self.row0 * g, self.col0 * g
        return crop_grid(base_grid, r0, r0 + self.rows * g, c0, c0 + self.cols * g)  # lazy for a grid file

    def describe(self) -> dict[str, Any]:
        return {
            "guide": self.guide.name,
            "target": self.target.name,
            "k": self.k,
            "size": [self.canvas_rows * self.tile_px, self.canvas_cols * self.tile_px],
            "region_px": [self.col0 * self.tile_px, self.row0 * self.tile_px, self.width, self.height],
        }


def _resolve_target(pipe, target) -> Magnification:
    return parse_level(pipe, target, "target magnification") if target is not None else pipe.scales[0]


def _resolve_levels(pipe, guide, target, size) -> tuple[Magnification, Magnification]:
    """The edge: parse the requested levels once (:mod:`.levels`) and choose the guide for ``size``."""
    tmag = _resolve_target(pipe, target)
    gmag = parse_level(pipe, guide, "guide magnification") if guide is not None else None
    return _choose_guide(pipe, gmag, tmag, size), tmag


def _choose_guide(pipe, gmag: Magnification | None, tmag: Magnification, size: int | None) -> Magnification:
    tile = pipe.config.image_size
    if size is not None and (size < tile or size % tile):
        raise ConfigError(f"size must be a positive multiple of the {tile}-px tile; got {size}")
    if gmag is not None:
        return gmag
    if size is None:
        raise ConfigError("give the guide magnification (e.g. 1.25x) or the output size")
    k = size // tile
    if k & (k - 1) or k < 2:
        raise ConfigError(
            f"size {size} is not a power-of-two number of {tile}-px tiles (2, 4, 8, 16, … × {tile})"
        )
    found = next((m for m in pipe.scales if m.downsample == tmag.downsample * k), None)
    if found is None:
        raise ConfigError(
            f"a {size}² image at {tmag} needs a guide {k}× coarser, which this model "
            f"({', '.join(pipe.scales.names)}) does not have"
        )
    return found


def plan_large_image(
    pipe,
    guide: str | int | Magnification | None = None,
    target: str | int | Magnification | None = None,
    size: int | None = None,
    region: tuple[int, int, int, int] | None = None,
    guide_shape: tuple[int, int] | None = None,
) -> LargeImagePlan:
    """Check one scale pair and work out its geometry (no model work). ``size`` is the side of the full
    output in target pixels (``k × tile``); with ``guide`` omitted it chooses the guide. ``region =
    (x, y, w, h)`` in target pixels, multiples of the tile size, selects a viewport. ``guide_shape`` is the
    pixel size of a fixed guide image (super-resolution input, cascade stage) instead of one patch."""
    gmag, tmag = _resolve_levels(pipe, guide, target, size)
    return _plan_pair(pipe, gmag, tmag, size, region, guide_shape)


def _plan_pair(
    pipe,
    gmag: Magnification,
    tmag: Magnification,
    size: int | None = None,
    region: tuple[int, int, int, int] | None = None,
    guide_shape: tuple[int, int] | None = None,
) -> LargeImagePlan:
    tile = pipe.config.image_size
    k = scale_ratio(pipe, gmag, tmag)
    if guide_shape is None:
        rows = cols = k
        if size is not None and size != k * tile:
            raise ConfigError(
                f"a {gmag} guide with {tmag} tiles gives a {k * tile}² image (k = {k}); --size {size} does not "
                f"match (omit --size, or choose the guide for it)"
            )
    else:
        foot = tile // k
        if guide_shape[0] % foot or guide_shape[1] % foot:
            raise InputError(f"the guide image {guide_shape} is not made of whole {foot}-px tile footprints")
        rows, cols = guide_shape[0] // foot, guide_shape[1] // foot
    if region is None:
        return LargeImagePlan(gmag, tmag, k, tile, rows, cols, 0, 0, rows, cols)
    x, y, w, h = (int(v) for v in region)
    if any(v % tile for v in (x, y, w, h)) or w < tile or h < tile:
        raise ConfigError(f"region (x, y, w, h) = {region} must be in whole {tile}-px tiles")
    if x < 0 or y < 0 or x + w > cols * tile or y + h > rows * tile:
        raise ConfigError(f"region {region} leaves the {cols * tile}×{rows * tile} image")
    return LargeImagePlan(gmag, tmag, k, tile, rows, cols, y // tile, x // tile, h // tile, w // tile)


@dataclass(frozen=True)
class CoarseRequest:
    """A request past one guide patch: the coarse canvas (``rows × cols`` patches at ``level``) and the
    cascade stages (:class:`LargeImagePlan`) it guides, the first one with a fixed guide of
    ``(rows·tile, cols·tile)`` pixels."""

    level: Magnification
    rows: int
    cols: int
    stages: list


def _k_max(pipe) -> int:
    """The largest ratio of one scale pair: a tile's footprint stays ≥ MIN_FOOTPRINT guide pixels."""
    return 1 << max((pipe.config.image_size // MIN_FOOTPRINT).bit_length() - 1, 0)


def coarse_level(pipe, target: Magnification) -> Magnification:
    """The level of the coarse canvas for ``target``: the coarsest level two scale pairs reach from it
    (ratio ≤ ``k_max²``; 0.15625x for 20x with 256² patches, 1.25x with 64² patches), so that the cascade
    after the canvas has at most two stages."""
    k_max = _k_max(pipe)
    reach = [m for m in pipe.scales if m.domain == target.domain and m.index >= target.index]
    return max(
        (m for m in reach if m.downsample // target.downsample <= k_max * k_max), key=lambda m: m.index
    )


def coarse_request(pipe, target: Magnification, size: int | None, region=None) -> CoarseRequest | None:
    """The geometry of ``generate --size`` past one patch of the coarse level (None when one patch covers
    ``size``): the coarse canvas at :func:`coarse_level`, then the cascade of :func:`plan_stages` (one scale
    pair, or two through the coarsest level the target allows) with a fixed first guide."""
    if size is None:
        return None
    tmag = require_level(pipe, target, "target magnification")
    coarsest = coarse_level(pipe, tmag)
    if coarsest.index <= tmag.index:
        return None
    found = coarse_canvas_needed(pipe, coarsest, tmag, size)
    if found is None:
        return None
    rows, cols = found
    tile = pipe.config.image_size
    shape = (rows * tile, cols * tile)
    k_max = _k_max(pipe)
    if coarsest.downsample // tmag.downsample <= k_max:
        stages = [_plan_pair(pipe, coarsest, tmag, region=region, guide_shape=shape)]
    else:
        mid = pipe.scales[tmag.index + k_max.bit_length() - 1]
        first = _plan_pair(pipe, coarsest, mid, guide_shape=shape)
        stages = [first, _plan_pair(pipe, mid, tmag, region=region, guide_shape=(first.height, first.width))]
    return CoarseRequest(coarsest, rows, cols, stages)


def plan_stages(
    pipe,
    guide: str | int | Magnification | None = None,
    target: str | int | Magnification | None = None,
    size: int | None = None,
    region: tuple[int, int, int, int] | None = None,
) -> list[LargeImagePlan]:
    """One scale pair when its ratio is allowed (k ≤ 16 for 256² patches), else a cascade of two pairs:
    guide → intermediate level (the coarsest one the target allows, 1.25x for 20x) → target, e.g.
    0.15625x → 1.25x → 20x for a 32768² image. The first stage is always generated whole; ``region``
    selects the tiles of the last one. A ``size`` past what one guide patch at the coarsest level covers
    (e.g. 131072² at 20x) gives the stages after a coarse canvas (:mod:`.coarse`): their first guide is
    that canvas, a fixed image."""
    tile = pipe.config.image_size
    if guide is None and size is not None:  # past one guide patch: the stages after a coarse canvas
        request = coarse_request(pipe, _resolve_target(pipe, target), size, region)
        if request is not None:
            return request.stages
    gmag, tmag = _resolve_levels(pipe, guide, target, size)
    k_max = 1 << max((tile // MIN_FOOTPRINT).bit_length() - 1, 0)
    if gmag.index <= tmag.index or gmag.downsample // tmag.downsample <= k_max:
        return [_plan_pair(pipe, gmag, tmag, size, region)]
    k_total = gmag.downsample // tmag.downsample
    if size is not None and size != k_total * tile:
        raise ConfigError(
            f"a {gmag} guide with {tmag} tiles gives a {k_total * tile}² image; --size {size} does not match"
        )
    mid = pipe.scales[tmag.index + k_max.bit_length() - 1]
    first = _plan_pair(pipe, gmag, mid)
    second = _plan_pair(pipe, mid, tmag, region=region, guide_shape=(first.height, first.width))
    return [first, second]
