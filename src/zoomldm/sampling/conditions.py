"""Conditions of large-image sampling: per-tile and guide contexts from a region's SSL grid (SPEC §4.1),
and the slerp-interpolated window grids of post-processing (SPEC §4.5).

A *base grid* is the raw, unpooled ``[C, H, W]`` grid of a region: one SSL embedding per base-resolution
tile (256² at 20x), row-major. A tile at the target magnification covers ``g × g`` base tiles
(``g = target.grid_size``: 1 at 20x); the guide covers the whole grid.

* tile condition: the tile's ``g × g`` sub-grid, pooled to ≤ 8×8 and standardised per token
  (:func:`zoomldm.conditioning.prepare_grid`), Summarizer at the target level;
* guide condition: the whole grid, pooled to ≤ 8×8 **then** standardised (the training order, SPEC §1.4 —
  the Colab notebook skipped the re-standardisation after pooling), Summarizer at the guide level.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..conditioning import pool_grid, prepare_grid, standardize_tokens
from ..errors import ConfigError
from ..scales import Magnification
from .levels import require_level

SLERP_DOT_THRESHOLD = 0.9995
CONTEXT_CHUNK = 256  # grids per Summarizer call


def summarize(
    pipe, grids: Sequence[torch.Tensor] | torch.Tensor, magnification: Magnification
) -> torch.Tensor:
    """Summarizer contexts ``[N, 65, D]`` (float32, on the pipeline's device) of *prepared* grids, in chunks.

    The Summarizer is called directly with the level's index (what ``pipe.condition`` does after parsing
    its argument): the level was parsed once at the edge and is not parsed again per chunk (:mod:`.levels`).
    """
    mag = require_level(pipe, magnification, "magnification")
    grids = list(grids.unbind(0)) if isinstance(grids, torch.Tensor) else list(grids)
    summarizer, device = pipe.summarizer, pipe.device
    out = []
    with torch.no_grad():
        for i in range(0, len(grids), CONTEXT_CHUNK):
            chunk = [g.to(device, summarizer.dtype) for g in grids[i : i + CONTEXT_CHUNK]]
            index = torch.full((len(chunk),), mag.index, dtype=torch.long, device=device)
            out.append(summarizer(chunk, index).float())
    return torch.cat(out) if out else torch.empty(0, 65, pipe.config.context_dim, device=pipe.device)


def tile_grids(
    base_grid: torch.Tensor, target: Magnification, tile_ids: Sequence[int], tiles_per_row: int
) -> list:
    """Prepared ``g × g`` grids (pooled ≤ 8×8, standardised) of the target tiles ``tile_ids`` (row-major
    indices in a canvas ``tiles_per_row`` tiles wide)."""
    g = target.grid_size
    rc = [divmod(int(tid), tiles_per_row) for tid in tile_ids]
    if not rc:
        return []
    # one read of the tiles' bounding box (a block's grid), then each tile's part of it: a grid read from
    # disk by block (io/grids.py) is opened once per block, not once per tile
    r0, c0 = min(r for r, _ in rc), min(c for _, c in rc)
    r1, c1 = max(r for r, _ in rc) + 1, max(c for _, c in rc) + 1
    box = base_grid[:, r0 * g : r1 * g, c0 * g : c1 * g]
    return [
        prepare_grid(box[:, (r - r0) * g : (r - r0 + 1) * g, (c - c0) * g : (c - c0 + 1) * g]) for r, c in rc
    ]


def tile_contexts(
    pipe, base_grid: torch.Tensor, target: Magnification, tile_ids: Sequence[int], tiles_per_row: int
) -> torch.Tensor:
    """Contexts ``[len(tile_ids), 65, D]`` of target tiles: each tile's own sub-grid of ``base_grid``."""
    return summarize(pipe, tile_grids(base_grid, target, tile_ids, tiles_per_row), target)


def guide_context(pipe, base_grid: torch.Tensor, guide: Magnification) -> torch.Tensor:
    """Context ``[1, 65, D]`` of the guide: the whole grid pooled to ≤ 8×8, then standardised."""
    return summarize(pipe, [prepare_grid(base_grid)], guide)


# ----------------------------------------------------------------------------------------------
# post-processing windows (SPEC §4.5)
# ----------------------------------------------------------------------------------------------
def slerp(
    v0: torch.Tensor, v1: torch.Tensor, t: torch.Tensor | float, dot_threshold: float = SLERP_DOT_THRESHOLD
) -> torch.Tensor:
    """Spherical interpolation over the last dim, batched; linear where ``|cos| > dot_threshold``.

    ``slerp(v0, v1, t) = sin((1−t)θ)/sin θ · v0 + sin(tθ)/sin θ · v1`` with ``cos θ`` the cosine between
    ``v0`` and ``v1`` (the vectors themselves are not normalised: magnitudes interpolate along). Computed
    in float64; returns the dtype of ``v0``.
    """
    a, b = v0.double(), v1.double()
    t = torch.as_tensor(t, dtype=torch.float64, device=a.device)
    while t.dim() < a.dim():
        t = t.unsqueeze(-1)
    na = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    nb = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    dot = (na * nb).sum(-1, keepdim=True)
    linear = dot.abs() > dot_threshold
    theta = torch.arccos(dot.clamp(-1.0, 1.0))
    sin_theta = torch.where(linear, torch.ones_like(theta), torch.sin(theta))
    s0 = torch.where(linear, 1.0 - t, torch.sin(theta - theta * t) / sin_theta)
    s1 = torch.where(linear, t, torch.sin(theta * t) / sin_theta)
    return (s0 * a + s1 * b).to(v0.dtype)


def window_grids(
    base_grid: torch.Tensor,
    positions: torch.Tensor,
    tile_latent: int,
    target: Magnification,
    dot_threshold: float = SLERP_DOT_THRESHOLD,
) -> torch.Tensor:
    """Interpolated, standardised grids ``[N, C, g', g']`` for windows at latent ``positions`` [N, 2] (y, x).

    A window whose top-left corner is ``(y, x)`` latent pixels into the canvas sees the base grid shifted
    by ``(y, x)/u`` base tiles, ``u = tile_latent / g`` latent pixels per base tile (SPEC §4.5 with g = 1:
    ``u = 64``). Each of its ``g × g`` tokens is interpolated from the four nearest base embeddings of the
    grid replicate-padded by one at the bottom and right: slerp along columns with the fractional column
    offset, then along rows with the fractional row offset (the interpolation weight is the window's overlap
    with each tile). Then pooled to ≤ 8×8 (only for g > 8) and standardised per token (unbiased std, no
    epsilon, as the official post-processing). ``dot_threshold = −1`` makes every interpolation linear.
    """
    g = target.grid_size
    if tile_latent % g:
        raise ConfigError(f"a {tile_latent}-px latent tile cannot hold a {g}×{g} grid")
    u = tile_latent // g
    H, W = (int(v) for v in base_grid.shape[-2:])
    pos = positions.to(torch.float64)
    offs = torch.arange(g, dtype=torch.float64)
    rows = pos[:, 0:1] / u + offs[None, :]  # [N, g] base-tile row coordinate of each token row
    cols = pos[:, 1:2] / u + offs[None, :]
    r0, c0 = rows.floor(), cols.floor()
    tr, tc = rows - r0, cols - c0
    # in the grid replicate-padded by one at the bottom and right ([H+1, W+1]): the last cell pairs
    # with the padding row / column
    r0, c0 = r0.long().clamp(max=H - 1), c0.long().clamp(max=W - 1)
    # only the box the windows read, padded where it reaches the padding (the same tokens as padding the
    # whole grid; a grid on disk is read over the box alone)
    top, left = int(r0.min()), int(c0.min())
    bottom, right = int(r0.max()) + 2, int(c0.max()) + 2
    box = base_grid[:, top : min(bottom, H), left : min(right, W)].float()
    pad = (0, right - min(right, W), 0, bottom - min(bottom, H))
    grid = torch.nn.functional.pad(box[None], pad, mode="replicate")[0] if any(pad) else box
    tokens = grid.permute(1, 2, 0)  # [bottom − top, right − left, C]
    r0, c0 = r0 - top, c0 - left
    R, Cc = r0[:, :, None].expand(-1, g, g), c0[:, None, :].expand(-1, g, g)  # [N, g, g]
    TR, TC = tr[:, :, None].expand(-1, g, g), tc[:, None, :].expand(-1, g, g)
    top = slerp(tokens[R, Cc], tokens[R, Cc + 1], TC, dot_threshold)
    bottom = slerp(tokens[R + 1, Cc], tokens[R + 1, Cc + 1], TC, dot_threshold)
    mixed = slerp(top, bottom, TR, dot_threshold).permute(0, 3, 1, 2)  # [N, C, g, g]
    out = [standardize_tokens(pool_grid(m), eps=0.0) for m in mixed]
    return torch.stack(out)
