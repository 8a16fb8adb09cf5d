"""Content masks at thumbnail resolution: where a slide has tissue, where a satellite image has data.

- Pathology (:func:`tissue_mask`): Otsu's threshold on the HSV saturation of a median-filtered
  thumbnail (stained tissue is coloured, glass and background are grey/white), clipped to
  ``[MIN_TISSUE_SATURATION, MAX_TISSUE_SATURATION]``: Otsu assumes two classes, so a thumbnail that is
  all glass would split its noise and one that is all tissue would split pale from dark tissue (both
  happen on crops and biopsies). Dark pixels (pen marks, scanner borders) are removed.
- Satellite (:func:`content_mask`): everything except no-data (pure black fill, or the file's no-data
  value) and, optionally, saturated-white cloud pixels.

:func:`tile_fractions` turns a mask into the fraction of each base tile that is content; the tiler
keeps a region when the mean fraction over its tiles reaches the user's threshold.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

#: saturation (0-255) below which a pixel is never tissue, whatever Otsu says (glass is ~0-10)
MIN_TISSUE_SATURATION = 15
#: saturation above which a pixel is always tissue, whatever Otsu says (pale H&E stroma is ~40-60)
MAX_TISSUE_SATURATION = 40
#: mean RGB below which a pixel is ink / scanner border, not tissue
MAX_DARKNESS = 30


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values (maximises the between-class variance of the histogram).

    Written out (a dozen lines) instead of adding scikit-image or OpenCV as a dependency for one
    function.
    """
    hist = np.bincount(values.ravel().astype(np.int64), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    levels = np.arange(256, dtype=np.float64)
    weight0 = np.cumsum(hist)
    weight1 = total - weight0
    mean0 = np.cumsum(hist * levels) / np.maximum(weight0, 1)
    mean1 = ((hist * levels).sum() - np.cumsum(hist * levels)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(np.argmax(between))


def tissue_mask(
    thumbnail: np.ndarray,
    min_saturation: int = MIN_TISSUE_SATURATION,
    max_saturation: int = MAX_TISSUE_SATURATION,
) -> np.ndarray:
    """Boolean tissue mask of a uint8 RGB thumbnail ``[h, w, 3]`` (clipped Otsu on saturation)."""
    image = Image.fromarray(thumbnail).filter(ImageFilter.MedianFilter(5))
    saturation = np.asarray(image.convert("HSV"))[..., 1]
    threshold = min(max(otsu_threshold(saturation), float(min_saturation)), float(max_saturation))
    dark = thumbnail.mean(axis=-1) < MAX_DARKNESS
    return (saturation > threshold) & ~dark


def content_mask(thumbnail: np.ndarray, nodata: int | None = 0, cloud_level: int | None = None) -> np.ndarray:
    """Boolean mask of valid satellite pixels of a uint8 RGB thumbnail ``[h, w, 3]``.

    Args:
        nodata: the fill value of pixels outside the scene (all three bands equal to it); None keeps all.
        cloud_level: when given, pixels whose three bands all exceed it (saturated white) count as cloud.
    """
    mask = np.ones(thumbnail.shape[:2], dtype=bool)
    if nodata is not None:
        mask &= ~np.all(thumbnail == nodata, axis=-1)
    if cloud_level is not None:
        mask &= ~np.all(thumbnail > cloud_level, axis=-1)
    return mask


def tile_fractions(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Fraction of content per tile, ``[rows, cols]`` float32, for a mask whose top-left ``rows × cols``
    block of equal cells covers the tile grid (the mask is cropped to a multiple of the grid)."""
    cell_h, cell_w = mask.shape[0] // rows, mask.shape[1] // cols
    if cell_h == 0 or cell_w == 0:
        raise ValueError(f"mask {mask.shape} is smaller than the {rows}×{cols} tile grid")
    block = mask[: rows * cell_h, : cols * cell_w].reshape(rows, cell_h, cols, cell_w)
    return block.mean(axis=(1, 3), dtype=np.float64).astype(np.float32)
