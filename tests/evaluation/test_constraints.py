"""Constraint (downsample vs guide) and tile-consistency metrics on the authors' real images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from zoomldm.errors import ZoomLDMError
from zoomldm.evaluation.constraints import (
    compare_images,
    compare_levels,
    constraint_metrics,
    downsample,
    tile_consistency,
    to_levels,
)


@pytest.fixture(scope="module")
def brca(data_dir) -> np.ndarray:
    """A 1024² region of brca_001.jpeg (uint8 HWC)."""
    with Image.open(data_dir / "brca_001.jpeg") as image:
        return np.asarray(image.convert("RGB").crop((1024, 2048, 2048, 3072)))


def test_an_image_against_its_own_downsampled_version(brca) -> None:
    exact = downsample(brca, 4)  # float levels, not re-quantised
    assert exact.shape == (1, 3, 256, 256) and exact.dtype == torch.float64
    same = constraint_metrics(brca, exact.float() / 127.5 - 1, clamp=False)  # the guide as a [-1, 1] tensor
    assert same.psnr > 120 and same.mae < 1e-4  # only the guide's float32 rounding remains
    identical = compare_levels(exact, exact)
    assert identical.psnr == math.inf and identical.mae == 0 and identical.max_abs == 0
    # the guide saved as 8 bits: uniform rounding error, MSE 1/12 → 58.9 dB, MAE 0.25
    guide = exact[0].permute(1, 2, 0).round().to(torch.uint8).numpy()
    quantised = constraint_metrics(brca, guide)  # factor 4 inferred from the sizes
    assert quantised.max_abs <= 0.5 and quantised.mae == pytest.approx(0.25, abs=0.02)
    assert quantised.psnr == pytest.approx(10 * math.log10(255**2 * 12), abs=0.3)


def test_area_filter_equals_pils_box_reduce(brca) -> None:
    ours = downsample(brca, 8)[0].permute(1, 2, 0).numpy()
    pil = np.asarray(Image.fromarray(brca).reduce(8)).astype(np.float64)  # box average, rounded to uint8
    assert np.abs(ours - pil).max() <= 0.5 + 1e-9


def test_noise_lowers_psnr_by_the_known_amount(brca) -> None:
    # i.i.d. noise of std σ on the high-res image becomes std σ/f after f×f averaging:
    # PSNR = 10·log10(255² f² / σ²), MAE = (σ/f)·√(2/π)
    factor = 4
    clean = torch.from_numpy(brca).double().permute(2, 0, 1)
    guide = downsample(brca, factor)[0] / 127.5 - 1
    noise = torch.randn(3, 1024, 1024, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    psnr = {}
    for sigma in (8.0, 16.0):
        noisy = (clean + sigma * noise) / 127.5 - 1  # the [-1, 1] form; clamp=False keeps the Gaussian exact
        m = constraint_metrics(noisy, guide, clamp=False)
        assert m.psnr == pytest.approx(10 * math.log10(255**2 * factor**2 / sigma**2), abs=0.05)
        assert m.mae == pytest.approx(sigma / factor * math.sqrt(2 / math.pi), rel=0.01)
        psnr[sigma] = m.psnr
    assert psnr[8.0] - psnr[16.0] == pytest.approx(20 * math.log10(2), abs=1e-9)  # same noise, doubled


def test_input_forms_agree_and_bad_inputs_are_refused(brca) -> None:
    crop = brca[:256, :256]
    as_float = torch.from_numpy(crop).permute(2, 0, 1).float() / 127.5 - 1  # [-1, 1] CHW
    np.testing.assert_allclose(to_levels(as_float).numpy(), to_levels(crop).numpy(), atol=1e-4)
    np.testing.assert_allclose(to_levels(torch.from_numpy(crop)).numpy(), to_levels(crop).numpy(), atol=0)
    assert to_levels(torch.full((3, 2, 2), 1.5)).max() == 255  # clamped to the 8-bit range by default
    assert to_levels(torch.full((3, 2, 2), 1.5), clamp=False).max() == pytest.approx(318.75)
    batch = torch.stack([as_float, as_float])
    assert downsample(batch, 2).shape == (2, 3, 128, 128)
    with pytest.raises(ZoomLDMError, match="multiples of the factor 3"):
        downsample(crop, 3)
    with pytest.raises(ZoomLDMError, match="integer multiple"):
        constraint_metrics(crop, crop[:100, :64])
    with pytest.raises(ZoomLDMError, match="differ in shape"):
        compare_images(crop, crop[:128])
    with pytest.raises(ZoomLDMError, match="unknown filter"):
        downsample(crop, 2, filter="lanczos")
    with pytest.raises(ZoomLDMError, match="uint8"):
        to_levels(crop.astype(np.int32))


def test_cubic_filter_is_the_samplers_down_operator(brca) -> None:
    from zoomldm.sampling.resize import downsampler

    crop = brca[:256, :256]
    cubic = downsample(crop, 4, filter="cubic")
    expected = downsampler(256, 4)(to_levels(crop).float())
    np.testing.assert_allclose(cubic.numpy(), expected.numpy(), rtol=1e-5, atol=1e-3)
    flat = np.full((64, 64, 3), 200, np.uint8)
    np.testing.assert_allclose(
        downsample(flat, 4, filter="cubic").numpy(), 200.0, atol=1e-9
    )  # weights sum to 1
    # a smooth image: the two filters nearly agree
    area = downsample(crop, 4)
    assert compare_levels(cubic, area).psnr > 25


def test_tile_consistency_of_overlapping_crops(brca) -> None:
    positions = [
        (0, 0),
        (0, 192),
        (192, 0),
        (192, 192),
        (600, 600),
    ]  # 256² tiles with 64-px overlaps; one apart
    tiles = [brca[y : y + 256, x : x + 256] for y, x in positions]
    same = tile_consistency(tiles, positions)
    # pairs: (0,1), (0,2), (1,3), (2,3) share 64×256 strips; (0,3) and (1,2) a 64×64 corner
    assert same.num_pairs == 6 and same.overlap_pixels == 4 * 64 * 256 + 2 * 64 * 64
    assert same.mae == 0 and same.psnr == math.inf
    shifted = [t.astype(np.int16) for t in tiles]
    shifted[3] = np.clip(shifted[3] + 10, 0, 255)
    changed = tile_consistency([t.astype(np.uint8) for t in shifted], positions)
    # tile 3 differs by 10 levels (less where it clipped at 255) in its overlaps: 64·256·2 + 64·64 of 69632 px
    share = (2 * 64 * 256 + 64 * 64) / same.overlap_pixels
    assert changed.mae == pytest.approx(10 * share, rel=0.05) and changed.max_abs == 10
    with pytest.raises(ZoomLDMError, match="no two tiles overlap"):
        tile_consistency(tiles[:1] + tiles[4:], positions[:1] + positions[4:])
    with pytest.raises(ZoomLDMError, match="positions"):
        tile_consistency(tiles, positions[:2])
