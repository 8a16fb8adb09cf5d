"""Summarizer token layout beyond the official vectors: odd, non-square and oversized grids."""

from __future__ import annotations

import pytest
import torch

from zoomldm import ZoomLDMError
from zoomldm.models import Summarizer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Summarizer(
        input_channels=8, hidden_channels=16, mlp_dim=32, num_layers=1, num_heads=2, mag_levels=8
    ).eval()


def token_positions(model, grid):
    """Indices of the positions that hold grid tokens (not the pad token)."""
    tokens = model.embed_grids([grid])[0]
    return [i for i in range(64) if not torch.allclose(tokens[i], model.pad_token[0, 0])]


@pytest.mark.parametrize(
    ("h", "w", "start"),
    [(1, 1, 32), (2, 2, 30), (4, 4, 24), (3, 3, 28), (1, 3, 31), (2, 4, 28), (5, 7, 15)],
)
def test_centred_layout(model, h, w, start):
    grid = torch.randn(8, h, w)
    assert token_positions(model, grid) == list(range(start, start + h * w))
    # row-major order: token at start + r*w + c is dim_reduce(grid[:, r, c])
    tokens = model.embed_grids([grid])[0]
    r, c = h - 1, w - 1
    with torch.no_grad():
        assert torch.allclose(tokens[start + r * w + c], model.dim_reduce(grid[:, r, c]))


def test_full_grid_has_no_pad(model):
    assert token_positions(model, torch.randn(8, 8, 8)) == list(range(64))


def test_large_grid_is_average_pooled(model):
    grid = torch.randn(8, 16, 16)
    pooled = grid.reshape(8, 8, 2, 8, 2).mean(dim=(2, 4))
    with torch.no_grad():
        assert torch.allclose(model([grid], [3]), model([pooled], [3]), atol=1e-6)


def test_mixed_batch_equals_individual(model):
    grids = [torch.randn(8, s, s) for s in (1, 3, 8, 2)]
    mags = torch.tensor([0, 1, 3, 7])
    with torch.no_grad():
        batch = model(grids, mags)
        single = torch.cat([model([g], m[None]) for g, m in zip(grids, mags, strict=True)])
    assert batch.shape == (4, 65, 16)
    assert torch.allclose(batch, single, atol=1e-5)


def test_bad_inputs(model):
    with pytest.raises(ZoomLDMError, match="8 channels.*got|expects 8"):
        model([torch.randn(5, 2, 2)], [0])
    with pytest.raises(ZoomLDMError, match="out of range"):
        model([torch.randn(8, 2, 2)], [8])
    with pytest.raises(ZoomLDMError, match="magnification indices"):
        model([torch.randn(8, 2, 2)] * 3, [0, 1])


def test_drop_conditions():
    ctx = torch.ones(1000, 2, 3)
    out = Summarizer.drop_conditions(ctx, 0.1, torch.Generator().manual_seed(0))
    dropped = (out.abs().sum(dim=(1, 2)) == 0).float().mean().item()
    assert 0.07 < dropped < 0.13  # Bernoulli(0.1) over 1000 contexts, ±3σ
    assert torch.equal(Summarizer.drop_conditions(ctx, 0.0), ctx)
