"""Magnification parsing and SSL grid handling (SPEC §1.1, §1.3-1.4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoomldm import PATHOLOGY, SATELLITE, ZoomLDMError
from zoomldm.conditioning import load_ssl_grid, prepare_grid, standardize_tokens
from zoomldm.config import ZoomLDMConfig


@pytest.mark.parametrize(
    ("text", "index"),
    [
        ("20x", 0),
        ("2.5x", 3),
        ("2_5x", 3),
        ("2.5", 3),
        ("1.25X", 4),
        ("0_15625x", 7),
        ("0.15625x", 7),
        (5, 5),
    ],
)
def test_pathology_names(text, index):
    assert PATHOLOGY.parse(text).index == index


def test_levels_geometry():
    m = PATHOLOGY.parse("1.25x")
    assert (m.downsample, m.fov_base_px, m.grid_size, m.key) == (16, 4096, 16, "1_25x")
    assert m.mpp == pytest.approx(8.0)
    assert SATELLITE.parse("1x").index == 0 and SATELLITE.parse("4x").fov_base_px == 2048


@pytest.mark.parametrize("bad", ["30x", "abc", 8, -1, "3x"])
def test_bad_magnification(bad):
    with pytest.raises(ZoomLDMError, match="20x, 10x, 5x, 2.5x|out of range"):
        PATHOLOGY.parse(bad)


def test_presets_levels():
    assert len(ZoomLDMConfig.from_preset("brca").scales) == 8
    naip = ZoomLDMConfig.from_preset("naip")
    assert naip.domain == "satellite" and naip.scales.names == ["1x", "2x", "3x", "4x"]


def test_prepare_grid_pools_then_normalises():
    grid = torch.randn(32, 16, 16) * 3 + 1
    out = prepare_grid(grid)
    pooled = grid.reshape(32, 8, 2, 8, 2).mean(dim=(2, 4))
    expected = (pooled - pooled.mean(0)) / (pooled.std(0, unbiased=True) + 1e-8)
    assert out.shape == (32, 8, 8)
    assert torch.allclose(out, expected, atol=1e-5)
    # order matters: normalising before pooling gives something else
    assert not torch.allclose(out, prepare_grid(standardize_tokens(grid), normalize=False), atol=1e-3)
    assert prepare_grid(torch.randn(32)).shape == (32, 1, 1)


@pytest.mark.parametrize("fmt", [".npy", ".pt", ".safetensors"])
def test_load_grid_formats(tmp_path, fmt):
    from safetensors.torch import save_file

    grid = torch.randn(32, 4, 4)
    path = tmp_path / f"g{fmt}"
    if fmt == ".npy":
        np.save(path, grid.numpy())
    elif fmt == ".pt":
        torch.save(grid, path)
    else:
        save_file({"ssl_feat": grid}, str(path))
    assert torch.equal(load_ssl_grid(path, channels=32), grid)


def test_load_grid_official_layouts(tmp_path):
    grid = torch.randn(32, 4, 4)
    np.save(tmp_path / "brca.npy", grid.reshape(32, 16).numpy())  # (1024, N) channels first
    np.save(tmp_path / "naip.npy", grid.reshape(32, 16).T.numpy())  # (N, 1024) as the NAIP loader
    assert torch.equal(load_ssl_grid(tmp_path / "brca.npy", channels=32), grid)
    assert torch.equal(load_ssl_grid(tmp_path / "naip.npy", channels=32), grid)
    with pytest.raises(ZoomLDMError, match="expects 1024"):
        load_ssl_grid(tmp_path / "brca.npy", channels=1024)
    with pytest.raises(ZoomLDMError, match="not found"):
        load_ssl_grid(tmp_path / "nope.npy")
