"""The guide of constrained sampling and the tiles' footprints in it (SPEC §4.3).

The two kinds of guide (:class:`SampledGuide`, denoised alongside the tiles; :class:`FixedGuide`, a fixed
image), the scale ratio ``k`` of a guide / target pair and its smallest tile footprint, the canvas of tiles
under a guide, and the footprints of tiles read from a guide image (a tensor, or a uint8 numpy / zarr array
read only over the tiles' bounding box).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..scales import Magnification

#: footprint of a target tile in the guide must stay at least this many pixels (k ≤ 16 for 256² patches,
#: the authors' range; larger ratios are reached by cascading scale pairs)
MIN_FOOTPRINT = 16


@dataclass
class SampledGuide:
    """A guide patch denoised alongside the tiles from ``noise`` [1,C,h,w] with ``context`` [1,65,D]."""

    context: torch.Tensor
    noise: torch.Tensor


@dataclass
class FixedGuide:
    """A fixed guide image at the guide magnification (super-resolution: the real low-resolution image;
    cascades: a decoded coarser stage): a ``[3, H, W]`` tensor in [-1, 1], or a uint8 ``[H, W, 3]`` array
    (numpy, or zarr: a cascade stage's output on disk) read per block footprint. ``H, W`` are multiples of
    the tile footprint."""

    image: Any


def scale_ratio(pipe, guide: Magnification, target: Magnification) -> int:
    """``k`` = base pixels of a guide pixel / of a target pixel, validated for joint sampling."""
    if guide.domain != target.domain:
        raise ConfigError(f"guide {guide} and target {target} are levels of different domains")
    if guide.index <= target.index:
        raise ConfigError(
            f"the guide / input magnification ({guide}) must be coarser than the output's ({target}); "
            f"levels: {', '.join(pipe.scales.names)}"
        )
    k = guide.downsample // target.downsample
    size = pipe.config.image_size
    if size % k or size // k < MIN_FOOTPRINT:
        largest = pipe.scales[min(target.index + _log2(size // MIN_FOOTPRINT), len(pipe.scales) - 1)]
        raise ConfigError(
            f"a {guide} guide for {target} tiles is a ratio of {k}: each tile would cover "
            f"{size / k:g} guide pixels (at least {MIN_FOOTPRINT} needed); the coarsest guide for {target} "
            f"is {largest} (generate_large_image cascades two scale pairs for larger images)"
        )
    return k


def _log2(n: int) -> int:
    return max(n.bit_length() - 1, 0)


def split_footprints(
    image: torch.Tensor, footprint: int, tile_ids: Sequence[int], tiles_per_row: int
) -> torch.Tensor:
    """The ``[n,3,f,f]`` footprints of tiles ``tile_ids`` (row-major) in a guide image ``[3,H,W]``."""
    out = []
    for tid in tile_ids:
        r, c = divmod(int(tid), tiles_per_row)
        out.append(image[:, r * footprint : (r + 1) * footprint, c * footprint : (c + 1) * footprint])
    return torch.stack(out)


def _geometry(pipe, guide: SampledGuide | FixedGuide, footprint: int, k: int) -> tuple[int, int]:
    """Tiles per row and per column of the canvas under ``guide`` (validating a fixed guide's shape)."""
    if isinstance(guide, SampledGuide):
        return k, k
    shape = tuple(guide.image.shape)
    if isinstance(guide.image, torch.Tensor) and len(shape) == 3 and shape[0] == 3:
        height, width = shape[1], shape[2]
    elif len(shape) == 3 and shape[2] == 3 and np.dtype(guide.image.dtype) == np.uint8:
        height, width = shape[0], shape[1]
    else:
        raise InputError(
            f"a fixed guide must be a [3, H, W] tensor in [-1, 1] or a uint8 [H, W, 3] array; got {shape}"
        )
    if height % footprint or width % footprint:
        raise InputError(
            f"a fixed guide must be [3, H, W] with H, W multiples of the tile footprint {footprint}; "
            f"got {shape}"
        )
    return width // footprint, height // footprint


def _fixed_footprints(
    image, footprint: int, tile_ids: Sequence[int], tiles_per_row: int, device
) -> torch.Tensor:
    """Footprints ``[n, 3, f, f]`` in [-1, 1] of a fixed guide, read only over the tiles' bounding box
    (a uint8 ``[H, W, 3]`` array — numpy or zarr — is converted there, as ``x / 127.5 − 1``)."""
    if isinstance(image, torch.Tensor):
        return split_footprints(image, footprint, tile_ids, tiles_per_row).to(
            device=device, dtype=torch.float32
        )
    rc = [divmod(int(t), tiles_per_row) for t in tile_ids]
    r0, r1 = min(r for r, _ in rc), max(r for r, _ in rc) + 1
    c0, c1 = min(c for _, c in rc), max(c for _, c in rc) + 1
    box = np.asarray(image[r0 * footprint : r1 * footprint, c0 * footprint : c1 * footprint])
    box = torch.from_numpy(np.ascontiguousarray(box)).permute(2, 0, 1).float() / 127.5 - 1.0
    shifted = [(r - r0) * (c1 - c0) + (c - c0) for r, c in rc]
    return split_footprints(box.to(device), footprint, shifted, c1 - c0)
