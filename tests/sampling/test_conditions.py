"""Conditions of large-image sampling: tile / guide contexts (SPEC §4.1) and post-processing windows
(SPEC §4.5): slerp, interpolated window grids, and window coverage."""

from __future__ import annotations

import torch

from zoomldm.conditioning import prepare_grid, standardize_tokens
from zoomldm.sampling.conditions import guide_context, slerp, tile_contexts, window_grids
from zoomldm.sampling.postprocess import window_counts, window_positions
from zoomldm.scales import PATHOLOGY


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def test_slerp_endpoints_norm_and_angle():
    g = torch.Generator().manual_seed(0)
    v0, v1 = (
        _unit(torch.randn(5, 64, generator=g, dtype=torch.float64)),
        _unit(torch.randn(5, 64, generator=g, dtype=torch.float64)),
    )
    assert torch.allclose(slerp(v0, v1, 0.0), v0, atol=1e-12)
    assert torch.allclose(slerp(v0, v1, 1.0), v1, atol=1e-12)
    theta = torch.arccos((v0 * v1).sum(-1))
    for t in (0.25, 0.5, 0.8):
        mid = slerp(v0, v1, t)
        assert torch.allclose(
            mid.norm(dim=-1), torch.ones(5, dtype=torch.float64), atol=1e-12
        )  # stays on the sphere
        assert torch.allclose(torch.arccos((_unit(mid) * v0).sum(-1).clamp(-1, 1)), t * theta, atol=1e-9)


def test_slerp_linear_fallback_and_batching():
    v0 = torch.randn(32, dtype=torch.float64)
    v1 = v0 + 1e-3 * torch.randn(32, dtype=torch.float64)  # |cos| > 0.9995: linear interpolation
    assert torch.allclose(slerp(v0, v1, 0.3), 0.7 * v0 + 0.3 * v1, atol=1e-15)
    a, b = torch.randn(3, 4, 16), torch.randn(3, 4, 16)
    t = torch.rand(3, 4)
    batched = slerp(a, b, t)
    for i in range(3):
        for j in range(4):
            assert torch.allclose(batched[i, j], slerp(a[i, j], b[i, j], float(t[i, j])), atol=1e-6)
    # magnitudes interpolate along with the direction (the official slerp does not normalise its inputs)
    assert torch.allclose(slerp(3 * v0, 3 * (-v0 + 0.5 * v1), 0.0), 3 * v0)


def test_window_grids_at_tiles_and_between_them():
    grid = torch.randn(32, 3, 3, generator=torch.Generator().manual_seed(1))
    P, x20 = 64, PATHOLOGY[0]
    pos = torch.tensor([[0, 0], [64, 128], [0, 16], [32, 48], [128, 128]])
    out = window_grids(grid, pos, P, x20)
    assert out.shape == (5, 32, 1, 1)

    def std(v):
        return standardize_tokens(v[:, None, None], eps=0.0)[:, 0, 0]

    assert torch.allclose(out[0, :, 0, 0], std(grid[:, 0, 0]), atol=1e-5)  # aligned with tile (0, 0)
    assert torch.allclose(out[1, :, 0, 0], std(grid[:, 1, 2]), atol=1e-5)
    # a quarter tile to the right: slerp of tile (0,0) and (0,1) at 0.25 (weight = overlap fraction)
    assert torch.allclose(out[2, :, 0, 0], std(slerp(grid[:, 0, 0], grid[:, 0, 1], 0.25)), atol=1e-5)
    # half a tile down, three quarters right: columns first, then rows
    top = slerp(grid[:, 0, 0], grid[:, 0, 1], 0.75)
    bottom = slerp(grid[:, 1, 0], grid[:, 1, 1], 0.75)
    assert torch.allclose(out[3, :, 0, 0], std(slerp(top, bottom, 0.5)), atol=1e-5)
    # the last tile: replicate padding supplies its right/bottom neighbours
    assert torch.allclose(out[4, :, 0, 0], std(grid[:, 2, 2]), atol=1e-5)
    tokens = out[:, :, 0, 0]
    assert torch.allclose(tokens.mean(1), torch.zeros(5), atol=1e-5)
    assert torch.allclose(tokens.std(1), torch.ones(5), atol=1e-5)


def test_window_grids_for_coarser_tiles_shift_the_grid():
    # 10x tiles hold 2×2 base embeddings (32 latent px each): a window half a tile to the right sees the
    # base grid shifted by exactly one column
    grid = torch.randn(32, 4, 4, generator=torch.Generator().manual_seed(2))
    out = window_grids(grid, torch.tensor([[0, 32]]), 64, PATHOLOGY[1])
    assert out.shape == (1, 32, 2, 2)
    assert torch.allclose(out[0], standardize_tokens(grid[:, 0:2, 1:3], eps=0.0), atol=1e-5)


def test_windows_cover_every_latent_pixel():
    # official geometry: a 4×4-tile canvas (256 latent px), window 64, stride 16 → 13 positions per axis
    pos = window_positions(256, 256, 64, 16)
    assert pos.shape == (169, 2)
    assert pos[:, 0].unique().tolist() == list(range(0, 193, 16))
    count = window_counts(256, 256, pos, 64)
    assert count.min() >= 1 and count.max() == 16 and count[0, 0] == 1
    # a stride that does not divide: one more window aligned to the far edge keeps full coverage
    pos = window_positions(96, 112, 64, 24)
    assert window_counts(96, 112, pos, 64).min() >= 1
    assert pos[:, 0].max() == 32 and pos[:, 1].max() == 48


def test_tile_and_guide_contexts(compat_pipe):
    grid = torch.randn(32, 16, 16, generator=torch.Generator().manual_seed(3)) * 3 + 1
    x20, x125 = compat_pipe.scales[0], compat_pipe.scales[4]
    ctx = tile_contexts(compat_pipe, grid, x20, [0, 17, 255], 16)
    expected = compat_pipe.summarizer(
        [prepare_grid(grid[:, 0, 0]), prepare_grid(grid[:, 1, 1]), prepare_grid(grid[:, 15, 15])], 0
    )
    assert torch.allclose(ctx, expected, atol=1e-5)
    guide = guide_context(compat_pipe, grid, x125)
    # pooled to 8×8, then standardised (training order) — not the Colab order (standardise, then pool)
    pooled_then_std = compat_pipe.summarizer(
        [standardize_tokens(torch.nn.functional.avg_pool2d(grid[None], 2)[0])], 4
    )
    std_then_pool = compat_pipe.summarizer(
        [torch.nn.functional.avg_pool2d(standardize_tokens(grid)[None], 2)[0]], 4
    )
    assert torch.allclose(guide, pooled_then_std, atol=1e-5)
    assert not torch.allclose(guide, std_then_pool, atol=1e-3)
    assert torch.isfinite(ctx).all() and ctx.shape == (3, 65, 64)
