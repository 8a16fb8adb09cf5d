"""Shocher's Resizer as weight matrices (SPEC §4.1) against a direct per-pixel evaluation of its formula."""

from __future__ import annotations

import math

import pytest
import torch

from zoomldm.errors import ZoomLDMError
from zoomldm.sampling.resize import Resizer, downsampler, resize_matrix, upsampler


def keys(x: float) -> float:
    """Keys' cubic convolution kernel, a = -0.5, written out from the formula."""
    a = abs(x)
    if a <= 1:
        return 1.5 * a**3 - 2.5 * a**2 + 1
    if a <= 2:
        return -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
    return 0.0


def reflect(j: int, n: int) -> int:
    """Symmetric reflection: ... 1 0 | 0 1 ... n-1 | n-1 n-2 ..."""
    while j < 0 or j >= n:
        j = -j - 1 if j < 0 else 2 * n - 1 - j
    return j


def reference_1d(values: list[float], out_len: int, scale: float) -> list[float]:
    """One output pixel at a time: centre, kernel taps (stretched when downscaling), normalise, reflect."""
    n = len(values)
    antialias = scale < 1
    width = 4 / scale if antialias else 4
    out = []
    for i in range(out_len):
        u = (i + 0.5 - (out_len - n * scale) / 2) / scale - 0.5  # input position of output pixel i
        taps = []
        for j in range(math.floor(u - width / 2) - 2, math.ceil(u + width / 2) + 3):
            d = u - j
            taps.append((j, scale * keys(scale * d) if antialias else keys(d)))
        total = sum(w for _, w in taps)
        out.append(sum(w / total * values[reflect(j, n)] for j, w in taps))
    return out


def reference_2d(image: torch.Tensor, scale: float) -> torch.Tensor:
    """[H, W] → one dimension at a time with :func:`reference_1d`."""
    h, w = image.shape
    oh, ow = math.ceil(h * scale - 1e-9), math.ceil(w * scale - 1e-9)
    rows = [reference_1d(image[r].tolist(), ow, scale) for r in range(h)]
    cols = [reference_1d([rows[r][c] for r in range(h)], oh, scale) for c in range(ow)]
    return torch.tensor([[cols[c][r] for c in range(ow)] for r in range(oh)], dtype=torch.float64)


@pytest.mark.parametrize(
    ("n", "scale"), [(64, 1 / 4), (32, 1 / 2), (64, 1 / 16), (16, 4.0), (8, 2.0), (10, 0.5)]
)
def test_matrix_matches_per_pixel_formula(n, scale):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    out_len = math.ceil(n * scale - 1e-9)
    expected = torch.tensor(reference_1d(x.tolist(), out_len, scale), dtype=torch.float64)
    got = resize_matrix(n, scale=scale) @ x
    assert got.shape == (out_len,)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("k", [2, 4])
def test_resizer_2d_matches_reference_batched(k):
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(k))
    down = downsampler(16, k)
    up = upsampler(16, k)
    low = down(images)
    assert low.shape == (2, 3, 16 // k, 16 // k)
    high = up(low)
    assert high.shape == images.shape
    for b in range(2):
        for c in range(3):
            ref_low = reference_2d(images[b, c].double(), 1 / k)
            assert torch.allclose(low[b, c].double(), ref_low, atol=1e-5)
            ref_high = reference_2d(low[b, c].double(), float(k))
            assert torch.allclose(high[b, c].double(), ref_high, atol=1e-5)


@pytest.mark.parametrize("k", [2, 4, 8, 16])
def test_rows_sum_to_one_and_constants_are_preserved(k):
    for m in (resize_matrix(256, scale=1 / k), resize_matrix(256 // k, scale=float(k))):
        assert torch.allclose(m.sum(dim=1), torch.ones(m.shape[0], dtype=torch.float64), atol=1e-12)
    const = torch.full((1, 3, 256, 256), 0.37)
    assert torch.allclose(downsampler(256, k)(const), torch.full((1, 3, 256 // k, 256 // k), 0.37), atol=1e-6)
    low = torch.full((1, 3, 256 // k, 256 // k), -0.8)
    assert torch.allclose(upsampler(256, k)(low), torch.full((1, 3, 256, 256), -0.8), atol=1e-6)


def test_down_then_up_keeps_smooth_images():
    # a smooth image (wavelength 128 px, symmetric about the borders as the reflection assumes) survives
    # down(4) then up(4) to within 0.1% of its amplitude; a pixel checkerboard does not (that detail is
    # what the guide cannot constrain)
    yy, xx = torch.meshgrid(torch.arange(256.0) + 0.5, torch.arange(256.0) + 0.5, indexing="ij")
    smooth = (torch.cos(2 * math.pi * yy / 128) * torch.cos(2 * math.pi * xx / 128))[None, None]
    down, up = downsampler(256, 4), upsampler(256, 4)
    assert (up(down(smooth)) - smooth).abs().max() < 1e-3
    checker = ((yy + xx) % 2 * 2 - 1)[None, None]
    assert (up(down(checker)) - checker).abs().mean() > 0.9


def test_antialiasing_only_when_downscaling():
    # upscaling uses the plain 4-tap kernel; downscaling by 4 stretches it to 16 taps
    assert int((resize_matrix(64, scale=4.0)[100] != 0).sum()) <= 4
    assert int((resize_matrix(256, scale=1 / 4)[30] != 0).sum()) == 16


def test_bad_sizes():
    with pytest.raises(ZoomLDMError, match="divide"):
        downsampler(256, 3)
    with pytest.raises(ZoomLDMError, match="built for"):
        Resizer((16, 16), 0.5)(torch.zeros(1, 3, 8, 8))
