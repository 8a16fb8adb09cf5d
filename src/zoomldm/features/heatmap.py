"""Attention heatmaps: per-tile scores placed at each tile's level-0 coordinates on a downscaled canvas.

Scores are turned into percentiles within the slide (as CLAM does), so heatmaps of different slides and
models share one colour scale, then colour-mapped; where a thumbnail of the slide is given, the colours are
blended over it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..errors import ZoomLDMError

# Viridis sampled at 0, 1/4, 1/2, 3/4, 1 and interpolated linearly: five anchors are enough for a
# heatmap, and matplotlib (the usual source of colour maps) is not a dependency of this package.
_ANCHORS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
    dtype=np.float64,
)


def _lookup_table() -> np.ndarray:
    v = np.linspace(0.0, 1.0, 256) * (len(_ANCHORS) - 1)
    lo = np.minimum(np.floor(v).astype(int), len(_ANCHORS) - 2)
    frac = (v - lo)[:, None]
    return np.round(_ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac).astype(np.uint8)


_LUT = _lookup_table()


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in ``[0, 1]`` to uint8 RGB (``values.shape + (3,)``), through a 256-entry table."""
    index = np.round(np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * 255).astype(np.intp)
    return _LUT[index]


def percentiles(scores: np.ndarray) -> np.ndarray:
    """Rank of each score within the slide, scaled to ``[0, 1]`` (ties share their mean rank)."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 1:
        return np.ones(1)
    return (rankdata(scores) - 1) / (scores.size - 1)


def attention_heatmap(
    coords: np.ndarray,
    scores: np.ndarray,
    patch_size_level0: int,
    max_side: int = 1024,
    max_tile_px: int = 32,
    thumbnail: Image.Image | None = None,
    alpha: float = 0.5,
    extent: tuple[int, int] | None = None,
) -> Image.Image:
    """Render tile scores as an RGB image whose longest side is at most ``max_side`` pixels.

    The canvas covers level-0 ``[0, extent)``; tiles are painted at ``coords · scale``.

    Args:
        coords: ``(N, 2)`` level-0 ``x, y`` of each tile's top-left corner.
        scores: ``(N,)`` attention (any scale; shown as within-slide percentiles).
        patch_size_level0: tile side in level-0 pixels.
        max_side: canvas size bound.
        max_tile_px: at most this many canvas pixels per tile side (keeps slides with few tiles small).
        thumbnail: an image of the whole slide (any size; resized to the canvas) to blend under the tiles.
        alpha: opacity of the colours over the thumbnail.
        extent: level-0 ``(width, height)`` the canvas covers (the slide's size, which a thumbnail covers);
            default: up to the furthest tile's far edge.
    """
    coords = np.asarray(coords, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if coords.shape != (scores.size, 2) or scores.size == 0:
        raise ZoomLDMError(f"heatmap needs (N, 2) coords and N scores, got {coords.shape} and {scores.shape}")
    if patch_size_level0 <= 0:
        raise ZoomLDMError(f"patch size must be positive, got {patch_size_level0}")
    far = coords.max(axis=0) + patch_size_level0
    extent = np.maximum(far, extent) if extent is not None else far  # level-0 (width, height)
    scale = min(max_side / float(extent.max()), max_tile_px / float(patch_size_level0))
    width, height = (max(1, int(np.ceil(e * scale))) for e in extent)
    total = np.zeros((height, width))
    count = np.zeros((height, width))
    x0 = np.floor(coords[:, 0] * scale).astype(int)
    y0 = np.floor(coords[:, 1] * scale).astype(int)
    x1 = np.maximum(x0 + 1, np.ceil((coords[:, 0] + patch_size_level0) * scale).astype(int))
    y1 = np.maximum(y0 + 1, np.ceil((coords[:, 1] + patch_size_level0) * scale).astype(int))
    # overlapping tiles are averaged
    for value, a, b, c, d in zip(percentiles(scores), y0, y1, x0, x1, strict=True):
        total[a:b, c:d] += value
        count[a:b, c:d] += 1
    covered = count > 0
    colours = colormap(total[covered] / count[covered])  # (n_covered, 3)
    if thumbnail is None:
        canvas = np.full((height, width, 3), 255, dtype=np.uint8)
        canvas[covered] = colours
    else:
        canvas = np.asarray(thumbnail.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)).copy()
        blend = (1 - alpha) * canvas[covered].astype(np.float64) + alpha * colours
        canvas[covered] = np.round(blend).astype(np.uint8)
    return Image.fromarray(canvas)


def save_heatmap(image: Image.Image, path: str | Path, info: dict[str, str] | None = None) -> Path:
    """Write a heatmap PNG (atomically) with ``info`` as PNG text chunks (provenance)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = PngInfo()
    for key, value in (info or {}).items():
        meta.add_text(key, str(value))
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", pnginfo=meta)
    tmp.replace(path)
    return path


def find_thumbnail(folder: str | Path | None, slide_id: str) -> Image.Image | None:
    """``<folder>/<slide_id>.{png,jpg,jpeg}`` if present."""
    if folder is None:
        return None
    for suffix in (".png", ".jpg", ".jpeg"):
        path = Path(folder) / f"{slide_id}{suffix}"
        if path.is_file():
            return Image.open(path)
    return None
