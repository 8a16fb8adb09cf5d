"""The zoom explorer's block geometry and pixel arithmetic: sizes, feather blending, seeds, seam statistics.

What :class:`~zoomldm.viewer.explorer.Explorer` computes with, free of state: :class:`Geometry` (the
pyramid's sizes), :func:`feather` (blend weights), :func:`block_seed`, :func:`psnr`, :func:`downsample2` and
the seam statistics (:func:`seam_statistics`).

**Geometry.** Pathology (and satellite) levels are a factor 2 apart, so one DZI level is one magnification
step. The full canvas is the image's size × 2^steps; the DZI levels up to the image's own are box-filtered
halvings of the image, DZI level ``image + k`` is the k-th generated magnification. Each generated level is
cut into square *blocks* of ``B`` pixels. Block ``(bx, by)`` of step ``k`` is made by
:meth:`ZoomLDMPipeline.super_resolve` of a *window* of the parent level (step ``k − 1``: the image itself for
the first generated level, the previous generated level, i.e. exactly the pixels the user saw, below that):
the block's parent footprint ``B/2`` plus a ring of ``ring`` parent pixels on every side; the window is
``window_patches`` model patches wide (``B/2 + 2·ring = window_patches · P``, ``P`` the model's image size).
The super-resolved window (``2×`` the window) is the block's *generation*: its footprint ``B × B`` plus
``2·ring`` px on every side. Parent pixels outside the canvas are mirrored.
Defaults: ``window_patches = 2``, ``ring = P/4`` → ``B = 3P`` (768 px for 256² models).

**Blending.** Neighbouring generations overlap by ``4·ring`` px across their border. A served pixel is the
:func:`feather`-weighted sum of the generations covering it: raised-cosine ramps over the ``2·blend`` px
centred on each border (default ``blend = ring``), weights adding up to 1 (2 blocks across a border, 4 at a
corner), weight 1 in a block's interior (its own pixels exactly), no ramp at the canvas edges. The parent
pixels of a deeper level are these served pixels. The cache holds generations; tiles are composited on read.

**Determinism.** A block's generation depends only on (settings, seed, level, block index, parent pixels):
it is sampled with seed ``blake2b(seed, level, bx, by)``, and its parent pixels are a fixed blend of such
generations. The order in which the user zooms does not enter, so the cache is byte-identical whatever the
order (tested).

**Seams.** Over the served pixels: ``seam_mae`` is the mean absolute difference (0-255) between the two pixel
columns (rows) that meet at a block border, over every pair of adjacent blocks whose served pixels are final;
``interior_mae`` is the same statistic over every pair of adjacent columns (rows) inside blocks
(:func:`seam_statistics` of a whole level gives the same numbers). ``seam_ratio = seam_mae / interior_mae`` is 1 when
borders are as smooth as the texture inside blocks.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError

TILE_SIZE = 256


@dataclass(frozen=True)
class Geometry:
    """Sizes of an explorer pyramid (pixels).

    Attributes:
        width, height: the image at the input magnification. steps: generated magnifications.
        patch: the model's image size ``P``. window_patches: parent window side in patches.
        ring: parent pixels of context on every side of a block's footprint (``2·ring`` px at the block's
            level). blend: half-width (block-level px) of the feathered overlap across a border between two
            blocks; default ``ring`` (an overlap ``2·ring`` px wide, inside both generations); 0: no blending.
        tile_size: Deep Zoom tile side (overlap 0).
    """

    width: int
    height: int
    steps: int
    patch: int
    window_patches: int = 2
    ring: int | None = None
    tile_size: int = TILE_SIZE
    blend: int | None = None

    def __post_init__(self) -> None:
        if self.ring is None:
            object.__setattr__(self, "ring", self.patch // 4)
        if self.blend is None:
            object.__setattr__(self, "blend", self.ring)
        if self.window_patches < 1:
            raise ConfigError(f"window_patches must be ≥ 1; got {self.window_patches}")
        if not 0 <= self.ring < self.window_patches * self.patch / 2:
            raise ConfigError(
                f"ring must be 0 ≤ ring < window/2 = {self.window_patches * self.patch // 2} parent px; "
                f"got {self.ring}"
            )
        if not 0 <= self.blend <= 2 * self.ring or 2 * self.blend > self.block:
            raise ConfigError(
                f"blend must be 0 ≤ blend ≤ 2·ring = {2 * self.ring} px and ≤ block/2 = {self.block // 2}; "
                f"got {self.blend}"
            )
        if self.tile_size < 16:
            raise ConfigError(f"tile_size must be ≥ 16; got {self.tile_size}")

    @property
    def window(self) -> int:
        """Side of the parent window fed to super-resolution."""
        return self.window_patches * self.patch

    @property
    def block(self) -> int:
        """Side ``B`` of a kept block at its own level: ``2·(window − 2·ring)``."""
        return 2 * (self.window - 2 * self.ring)

    @property
    def margin(self) -> int:
        """Pixels of a block's generation beyond its footprint on every side, at the block's level."""
        return 2 * self.ring

    @property
    def generation(self) -> int:
        """Side of a block's whole generation (centre + ring) at its level: ``2·window``."""
        return 2 * self.window

    @property
    def max_level(self) -> int:
        """The finest Deep Zoom level (DZI level 0 is 1×1 px)."""
        side = max(self.width, self.height) << self.steps
        return max(0, math.ceil(math.log2(side)))

    @property
    def image_level(self) -> int:
        """The Deep Zoom level of the image's own pixels."""
        return self.max_level - self.steps

    def level_size(self, level: int) -> tuple[int, int]:
        """``(width, height)`` of Deep Zoom ``level``."""
        if level >= self.image_level:
            k = level - self.image_level
            return self.width << k, self.height << k
        scale = 2 ** (self.image_level - level)
        return max(1, math.ceil(self.width / scale)), max(1, math.ceil(self.height / scale))

    def level_tiles(self, level: int) -> tuple[int, int]:
        """Tile columns and rows of ``level``."""
        w, h = self.level_size(level)
        return math.ceil(w / self.tile_size), math.ceil(h / self.tile_size)

    def step_blocks(self, step: int) -> tuple[int, int]:
        """Block columns and rows of generated step ``step`` (1 = first generated level)."""
        w, h = self.width << step, self.height << step
        return math.ceil(w / self.block), math.ceil(h / self.block)

    def dzi(self, fmt: str = "png") -> bytes:
        """The ``.dzi`` descriptor."""
        w, h = self.level_size(self.max_level)
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{fmt}" '
            f'Overlap="0" TileSize="{self.tile_size}"><Size Width="{w}" Height="{h}"/></Image>\n'
        ).encode()


def _mirror(index: np.ndarray, size: int) -> np.ndarray:
    """Indices mirrored into ``[0, size)`` (half-sample symmetric, any distance)."""
    period = 2 * size
    index = np.mod(index, period)
    return np.where(index >= size, period - 1 - index, index)


def _ramp(t: np.ndarray) -> np.ndarray:
    """Raised cosine from 0 (``t ≤ 0``) to 1 (``t ≥ 1``); ``ramp(t) + ramp(1 − t) = 1``."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(t, 0.0, 1.0))


def feather(coord: np.ndarray, index: int, count: int, block: int, blend: int) -> np.ndarray:
    """Weight of block ``index`` (of ``count`` along one axis, side ``block``) at pixel coordinates ``coord``.

    1 inside the block's footprint away from its borders, 0 outside its footprint + ``blend``; across a
    border with a neighbour, a raised-cosine ramp over the ``2·blend`` pixels centred on it, such that the
    weights of the two blocks add up to 1 (a partition of unity; in 2-D the product of the two axes', so
    the 4 blocks of a corner add up to 1 too). At the canvas edges (no neighbour) there is no ramp.
    """
    lo, hi = index * block, (index + 1) * block
    centre = coord.astype(np.float64) + 0.5
    weight = np.ones(coord.shape, np.float64)
    if blend == 0:
        inside = (centre > lo if index > 0 else True) & (centre < hi if index < count - 1 else True)
        return weight * inside
    if index > 0:
        weight *= _ramp((centre - (lo - blend)) / (2 * blend))
    if index < count - 1:
        weight *= _ramp(((hi + blend) - centre) / (2 * blend))
    return weight


def block_seed(seed: int, step: int, bx: int, by: int) -> int:
    """The sampling seed of one block: a hash of (seed, step, block index), never of the request order."""
    digest = hashlib.blake2b(f"{seed}:{step}:{bx}:{by}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB, peak 255) of two uint8 images, capped at 100 dB (equal images; JSON has no infinity)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse <= 255.0**2 * 1e-10 else min(100.0, 10 * math.log10(255.0**2 / mse))


def downsample2(image: np.ndarray) -> np.ndarray:
    """2× box downsampling of a uint8 image with even sides."""
    h, w = image.shape[:2]
    x = image.astype(np.float64).reshape(h // 2, 2, w // 2, 2, -1).mean(axis=(1, 3))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _seam_summary(record: dict[str, Any]) -> dict[str, Any]:
    """Seam vs interior statistics of a level record (see the module docstring)."""
    inside = [b["interior"] for b in record["blocks"].values() if "interior" in b]
    seams = list(record.get("pairs", {}).values())
    result: dict[str, Any] = {"pairs": len(seams)}
    inside_n = sum(n for _, n in inside)
    seam_n = sum(n for _, n in seams)
    if inside_n:
        result["interior_mae"] = round(sum(v for v, _ in inside) / inside_n, 3)
    if seam_n:
        result["seam_mae"] = round(sum(v for v, _ in seams) / seam_n, 3)
        if result.get("interior_mae"):
            result["seam_ratio"] = round(result["seam_mae"] / result["interior_mae"], 3)
    return result


def seam_statistics(image: np.ndarray, block: int) -> dict[str, float]:
    """The seam statistic of a whole served level (uint8 ``[H, W, 3]``) cut in blocks of ``block`` px:
    ``seam_mae`` over the adjacent column (row) pairs that straddle a block border, ``interior_mae`` over the
    others, ``seam_ratio`` their quotient (what the level record accumulates block by block)."""
    x = image.astype(np.float64)
    dx, dy = np.abs(np.diff(x, axis=1)), np.abs(np.diff(x, axis=0))
    cx = (np.arange(1, x.shape[1]) % block) == 0  # pair (c-1, c) straddles a border when c % block == 0
    cy = (np.arange(1, x.shape[0]) % block) == 0
    seam = dx[:, cx].sum() + dy[cy].sum()
    seam_n = dx[:, cx].size + dy[cy].size
    inside = dx[:, ~cx].sum() + dy[~cy].sum()
    inside_n = dx[:, ~cx].size + dy[~cy].size
    result = {"interior_mae": round(float(inside / inside_n), 3) if inside_n else float("nan")}
    if seam_n:
        result["seam_mae"] = round(float(seam / seam_n), 3)
        result["seam_ratio"] = round(result["seam_mae"] / result["interior_mae"], 3)
    return result
