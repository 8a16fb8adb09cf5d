"""Sizes of the pyramidal TIFFs (:mod:`.tiff`): the levels of the pyramid, the compressions, and the file
size (an upper bound, a typical size for disk planning, and whether it must be a BigTIFF).
"""

from __future__ import annotations

import math

from ..errors import ZoomLDMError

COMPRESSIONS = {"jpeg": "jpeg", "zlib": "zlib", "deflate": "zlib", "none": None}
#: tile edge of the written TIFFs (what slide readers expect)
TIFF_TILE = 256
#: a classic TIFF addresses its data with 32-bit offsets: files must stay below 4 GiB
CLASSIC_TIFF_LIMIT = 2**32
#: typical stored bytes per pixel, for disk planning (:func:`estimated_tiff_bytes`): JPEG quality 90 measured
#: 0.36 B/px on the 256² tiles of the H&E image brca_001.jpeg, taken as 0.5 for margin; zlib measured
#: 2.75 B/px on the same image (no predictor), taken as 3 (raw): lossless compression of generated tissue
#: is not counted on
TIFF_BYTES_PER_PIXEL = {"jpeg": 0.5, "zlib": 3.0, "deflate": 3.0, "none": 3.0}


def level_shapes(
    height: int, width: int, tile_size: int = 256, levels: int | None = None
) -> list[tuple[int, int]]:
    """Sizes of the pyramid levels: each level halves the previous one (rounding up, so no edge pixel is
    lost); by default levels are added until the image fits in one tile."""
    shapes = [(height, width)]
    while (levels is None and max(shapes[-1]) > tile_size) or (levels is not None and len(shapes) < levels):
        h, w = shapes[-1]
        if h == 1 and w == 1:
            break
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def _padded_pixels(height: int, width: int, tile_size: int) -> int:
    """Pixels stored for a pyramid: every level's tiles, edge tiles padded to whole tiles."""
    return sum(
        math.ceil(h / tile_size) * math.ceil(w / tile_size) * tile_size**2
        for h, w in level_shapes(height, width, tile_size)
    )


def tiff_size_bound(height: int, width: int, tile_size: int = TIFF_TILE) -> int:
    """An upper bound of the pyramidal TIFF's size in any compression: every level's padded tiles
    uncompressed (3 B/px; JPEG and zlib tiles are not larger in practice) plus 1 % for tags and offsets."""
    return int(_padded_pixels(height, width, tile_size) * 3 * 1.01) + 2**16


def estimated_tiff_bytes(
    height: int, width: int, compression: str = "jpeg", tile_size: int = TIFF_TILE
) -> int:
    """Typical size of the pyramidal TIFF (for disk planning): :data:`TIFF_BYTES_PER_PIXEL` × the padded
    pixels of all levels (≈ 4/3 of the full resolution) + 1 % for tags and offsets."""
    if compression not in COMPRESSIONS:
        raise ZoomLDMError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    per_pixel = TIFF_BYTES_PER_PIXEL[compression]
    return int(_padded_pixels(height, width, tile_size) * per_pixel * 1.01) + 2**16


def needs_bigtiff(height: int, width: int, tile_size: int = TIFF_TILE) -> bool:
    """Whether the pyramid must be a BigTIFF: when it *could* pass the classic TIFF's 4 GiB
    (:func:`tiff_size_bound`). The bound, not a typical size, decides, because a classic file that grows past
    4 GiB cannot be finished (tifffile stops at the first offset that does not fit) and that would lose a long
    run at its last step; BigTIFF opens in OpenSlide, tifffile, Bio-Formats and QuPath alike."""
    return tiff_size_bound(height, width, tile_size) >= CLASSIC_TIFF_LIMIT
