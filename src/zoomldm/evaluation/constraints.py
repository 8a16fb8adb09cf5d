"""Constraint and consistency metrics for large images and super-resolution (library API).

* :func:`constraint_metrics`: downsample a high-magnification image by an integer factor and compare
  it with the guide (joint multi-scale sampling) or the low-resolution input (super-resolution): PSNR
  (peak 255) and mean absolute error in 8-bit grey levels.
* :func:`tile_consistency`: agreement of overlapping tiles placed on one canvas (MAE / PSNR over the
  pixels that two tiles share).

Images are uint8 ``[H, W, 3]`` (numpy or torch, channels last) or float ``[3, H, W]`` / ``[B, 3, H, W]``
tensors in ``[-1, 1]`` (mapped to ``(x + 1)·127.5``; clamped to the 8-bit range unless ``clamp=False``).
All arithmetic is float64; the downsampled image is *not* re-quantised.

Downsampling filters:

* ``"area"`` (default): the mean of each ``factor × factor`` block (box filter, ``avg_pool2d``): for an
  integer factor this is exact area resampling, antialiased, with no phase shift — the usual way to make
  a lower-magnification view, and independent of the sampler.
* ``"cubic"``: the antialiased Keys cubic of :mod:`zoomldm.sampling.resize` (the joint sampler's
  ``down`` operator), i.e. the residual its constraint step minimises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ZoomLDMError

FILTERS = ("area", "cubic")


@dataclass
class ImageComparison:
    """Differences between two images in 8-bit levels."""

    psnr: float  # dB, peak 255; inf for identical images
    mae: float  # mean |a − b| in grey levels
    rmse: float
    max_abs: float
    num_values: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_levels(image: Any, clamp: bool = True) -> torch.Tensor:
    """float64 ``[B, C, H, W]`` in 0…255 from uint8 HWC / NHWC or a float [-1, 1] CHW / NCHW tensor."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image) if image.flags.writeable else np.array(image))
    if not isinstance(image, torch.Tensor):
        raise ZoomLDMError(f"expected a numpy array or torch tensor image, got {type(image).__name__}")
    if image.dtype == torch.uint8:
        if image.dim() not in (3, 4) or image.shape[-1] not in (1, 3, 4):
            raise ZoomLDMError(f"uint8 images must be [H, W, C] or [N, H, W, C]; got {list(image.shape)}")
        x = image.double().movedim(-1, -3)
    elif image.is_floating_point():
        if image.dim() not in (3, 4) or image.shape[-3] not in (1, 3, 4):
            raise ZoomLDMError(
                f"float images must be [C, H, W] or [N, C, H, W] in [-1, 1]; got {list(image.shape)}"
            )
        x = (image.detach().double() + 1) * 127.5
        if clamp:
            x = x.clamp(0, 255)
    else:
        raise ZoomLDMError(f"images must be uint8 (0..255) or float in [-1, 1]; got {image.dtype}")
    return (x if x.dim() == 4 else x.unsqueeze(0)).cpu()


def downsample(image: Any, factor: int, filter: str = "area", clamp: bool = True) -> torch.Tensor:
    """Levels ``[B, C, H/factor, W/factor]`` of ``image`` downsampled by an integer ``factor``."""
    return downsample_levels(to_levels(image, clamp), factor, filter)


def downsample_levels(x: torch.Tensor, factor: int, filter: str = "area") -> torch.Tensor:
    """:func:`downsample` of a levels tensor ``[B, C, H, W]`` (as :func:`to_levels` returns)."""
    if not isinstance(factor, int | np.integer) or factor < 1:
        raise ZoomLDMError(f"the downsampling factor must be a positive integer, got {factor!r}")
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ZoomLDMError(f"the image is {w}x{h} px; both sides must be multiples of the factor {factor}")
    if factor == 1:
        return x
    if filter == "area":
        return F.avg_pool2d(x, factor)
    if filter == "cubic":
        from ..sampling.resize import Resizer

        return Resizer((h, w), 1.0 / factor)(x)
    raise ZoomLDMError(f"unknown filter {filter!r}; expected one of {', '.join(FILTERS)}")


def compare_images(a: Any, b: Any, clamp: bool = True) -> ImageComparison:
    """PSNR (peak 255) and MAE between two equally sized images (uint8 or [-1, 1] float, any mix)."""
    return compare_levels(to_levels(a, clamp), to_levels(b, clamp))


def compare_levels(x: torch.Tensor, y: torch.Tensor) -> ImageComparison:
    """PSNR (peak 255) and MAE between two levels tensors (0…255 floats, as :func:`to_levels` returns)."""
    if x.shape != y.shape:
        raise ZoomLDMError(f"images differ in shape: {list(x.shape)} vs {list(y.shape)}")
    diff = x - y
    mse = float((diff**2).mean())
    return ImageComparison(
        psnr=float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse),
        mae=float(diff.abs().mean()),
        rmse=math.sqrt(mse),
        max_abs=float(diff.abs().max()),
        num_values=diff.numel(),
    )


def constraint_metrics(
    high: Any, guide: Any, factor: int | None = None, filter: str = "area", clamp: bool = True
) -> ImageComparison:
    """Compare ``downsample(high, factor)`` with ``guide`` (the low-magnification image or LR input).

    ``factor`` defaults to the size ratio, which must be the same integer on both axes.
    """
    hi, lo = to_levels(high, clamp), to_levels(guide, clamp)
    if factor is None:
        (hh, hw), (lh, lw) = hi.shape[-2:], lo.shape[-2:]
        if hh % lh or hw % lw or hh // lh != hw // lw:
            raise ZoomLDMError(
                f"the image ({hw}x{hh}) is not an integer multiple of the guide ({lw}x{lh}) on both axes"
            )
        factor = hh // lh
    return compare_levels(downsample_levels(hi, factor, filter), lo)


@dataclass
class TileConsistency:
    """Agreement of overlapping tiles: differences over every pixel two tiles share."""

    mae: float
    psnr: float
    max_abs: float
    num_pairs: int
    overlap_pixels: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tile_consistency(
    tiles: Sequence[Any], positions: Sequence[tuple[int, int]], clamp: bool = True
) -> TileConsistency:
    """MAE / PSNR between overlapping tiles placed at ``positions`` (top-left ``(y, x)`` on one canvas).

    Each pair of tiles that overlaps contributes the differences over its shared rectangle; tiles that
    only touch contribute nothing. Cost: one comparison per overlapping pair.
    """
    if len(tiles) != len(positions):
        raise ZoomLDMError(f"got {len(tiles)} tiles but {len(positions)} positions")
    levels = [to_levels(t, clamp)[0] for t in tiles]
    abs_sum = sq_sum = 0.0
    max_abs, count, pairs, pixels = 0.0, 0, 0, 0
    for i in range(len(levels)):
        yi, xi = positions[i]
        hi, wi = levels[i].shape[-2:]
        for j in range(i + 1, len(levels)):
            yj, xj = positions[j]
            hj, wj = levels[j].shape[-2:]
            top, left = max(yi, yj), max(xi, xj)
            bottom, right = min(yi + hi, yj + hj), min(xi + wi, xj + wj)
            if bottom <= top or right <= left:
                continue
            a = levels[i][:, top - yi : bottom - yi, left - xi : right - xi]
            b = levels[j][:, top - yj : bottom - yj, left - xj : right - xj]
            diff = a - b
            abs_sum += float(diff.abs().sum())
            sq_sum += float((diff**2).sum())
            max_abs = max(max_abs, float(diff.abs().max()))
            count += diff.numel()
            pairs += 1
            pixels += (bottom - top) * (right - left)
    if count == 0:
        raise ZoomLDMError("no two tiles overlap")
    mse = sq_sum / count
    return TileConsistency(
        mae=abs_sum / count,
        psnr=float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse),
        max_abs=max_abs,
        num_pairs=pairs,
        overlap_pixels=pixels,
    )
