"""The blocks of the tile canvas: the tile batches of constrained sampling (SPEC §4.3).

A batch is a block of the canvas (as square as ``tile_batch`` allows), not a run of positions in the
request, so that a request made of whole blocks (:func:`block_cover`) batches its tiles as the full image
does (:func:`batch_rows`; the reason is in the :mod:`.constrained` docstring). :func:`canvas_layout` gives
the :class:`~.canvas.BlockLayout` of the canvas under a guide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .canvas import BlockLayout
from .footprints import _geometry, scale_ratio
from .levels import require_level


def block_shape(tile_batch: int) -> tuple[int, int]:
    """Rows × columns of the canvas blocks that form the tile batches: as square as ``tile_batch`` allows
    (16 → 4×4, 64 → 8×8, 8 → 2×4, 1 → 1×1), so that a viewport touches few blocks."""
    rows = max(1, math.isqrt(int(tile_batch)))
    return rows, max(1, int(tile_batch) // rows)


def batch_rows(ids: Sequence[int], tiles_per_row: int, tile_batch: int) -> list[list[int]]:
    """The batches of a request: positions in ``ids`` grouped by the canvas block of their tile (row-major
    blocks of :func:`block_shape`; within a block, by tile id).

    Why blocks and not consecutive positions: a batch's rounding depends on which tiles share it, and the
    Newton loop amplifies rounding (:mod:`.constrained` docstring). With batches fixed by the canvas, a
    request that contains whole blocks (:func:`block_cover`) batches every tile as the full image does, so
    its tiles are bitwise those of the full image."""
    bh, bw = block_shape(tile_batch)
    blocks: dict[tuple[int, int], list[int]] = {}
    for pos, tid in sorted(enumerate(ids), key=lambda item: item[1]):
        r, c = divmod(int(tid), tiles_per_row)
        blocks.setdefault((r // bh, c // bw), []).append(pos)
    return [blocks[key] for key in sorted(blocks)]


def block_cover(ids: Sequence[int], tiles_per_row: int, tiles_per_col: int, tile_batch: int) -> list[int]:
    """All tile ids of the canvas blocks that ``ids`` touch, sorted (a superset of ``ids``)."""
    bh, bw = block_shape(tile_batch)
    cover: set[int] = set()
    for tid in ids:
        r, c = divmod(int(tid), tiles_per_row)
        r0, c0 = r // bh * bh, c // bw * bw
        for rr in range(r0, min(r0 + bh, tiles_per_col)):
            cover.update(range(rr * tiles_per_row + c0, rr * tiles_per_row + min(c0 + bw, tiles_per_row)))
    return sorted(cover)


def canvas_layout(pipe, guide_magnification, target_magnification, guide, tile_batch: int) -> BlockLayout:
    """The :class:`~.canvas.BlockLayout` of the canvas under ``guide`` in blocks of ``tile_batch`` tiles."""
    gmag = require_level(pipe, guide_magnification, "guide magnification")
    tmag = require_level(pipe, target_magnification, "target magnification")
    k = scale_ratio(pipe, gmag, tmag)
    cols, rows = _geometry(pipe, guide, pipe.config.image_size // k, k)
    bh, bw = block_shape(tile_batch)
    return BlockLayout(rows, cols, bh, bw, pipe.unet.config.in_channels, pipe.config.latent_size)
