"""Tissue / valid-data masks and the multi-scale region layout (SPEC §1)."""

from __future__ import annotations

import numpy as np
import pytest

from zoomldm.data.readers import open_image
from zoomldm.data.tiling import base_grid, content_fractions, plan_slide
from zoomldm.data.tissue import content_mask, otsu_threshold, tile_fractions, tissue_mask
from zoomldm.errors import ZoomLDMError
from zoomldm.scales import PATHOLOGY, SATELLITE


@pytest.fixture(scope="module")
def slide_on_glass(tmp_path_factory, brca_image, pyramid_tiff):
    """A 2048² slide: real tissue in the top-left 1024×1536 block, white glass (with noise) elsewhere."""
    rng = np.random.default_rng(0)
    canvas = np.clip(rng.normal(243, 3, size=(2048, 2048, 3)), 0, 255).astype(np.uint8)
    canvas[:1024, :1536] = brca_image[:1024, :1536]
    return pyramid_tiff(tmp_path_factory.mktemp("glass") / "glass.tif", canvas, mpp=0.5)


def test_otsu_splits_a_bimodal_histogram():
    values = np.concatenate([np.full(1000, 20), np.full(500, 200)]).astype(np.uint8)
    assert 20 <= otsu_threshold(values) < 200


def test_tissue_mask_on_real_tissue_and_glass(brca_image):
    thumb = brca_image[::16, ::16]
    assert tissue_mask(thumb).mean() > 0.9  # all tissue: Otsu alone would split pale from dark tissue
    glass = np.full((64, 64, 3), 240, np.uint8)
    assert tissue_mask(glass).mean() == 0
    pen = thumb.copy()
    pen[:20] = 10  # black ink is not tissue
    assert not tissue_mask(pen)[:18].any()


def test_content_mask_drops_nodata_and_clouds():
    image = np.full((4, 4, 3), 100, np.uint8)
    image[0] = 0  # no-data fill
    image[1, :2] = 250  # saturated cloud
    assert content_mask(image).sum() == 12
    assert content_mask(image, cloud_level=240).sum() == 10
    assert content_mask(image, nodata=None).all()


def test_tile_fractions_average_each_cell():
    mask = np.zeros((16, 24), bool)
    mask[:8, :8] = True
    mask[8:, 16:20] = True
    np.testing.assert_allclose(tile_fractions(mask, 2, 3), [[1, 0, 0], [0, 0, 0.5]])


def test_regions_follow_the_tissue_and_nest_across_levels(slide_on_glass):
    with open_image(slide_on_glass) as reader:
        grid = base_grid(reader, 0.5, 0.5)
        content = content_fractions(reader, grid, "pathology")
        assert content[:4, :6].mean() > 0.9 and content[4:].max() < 0.05 and content[:, 6:].max() < 0.05
        plan = plan_slide(reader, grid, list(PATHOLOGY)[:4], 0.5, content=content)
        counts = plan.counts()
        assert counts == {"20x": 24, "10x": 6, "5x": 1, "2.5x": 0}  # 2.5x: the 8×8 block is 37.5% tissue
        # each kept 10x region is aligned to 2 tiles and its four 20x tiles are all kept
        kept20 = {tuple(rc) for rc in plan.regions[0]}
        for r, c in plan.regions[1]:
            assert r % 2 == 0 and c % 2 == 0
            assert {(r, c), (r + 1, c), (r, c + 1), (r + 1, c + 1)} <= kept20
        # a per-level threshold keeps the large region (lower thresholds for larger images)
        plan = plan_slide(reader, grid, list(PATHOLOGY)[:4], (0.5, 0.5, 0.5, 0.3), content=content)
        assert plan.counts()["2.5x"] == 1 and plan.tiles_needed().sum() == 64
        with pytest.raises(ZoomLDMError, match="thresholds"):
            plan_slide(reader, grid, list(PATHOLOGY)[:4], (0.5, 0.5), content=content)


def test_satellite_layout_keeps_native_resolution(data_dir):
    with open_image(data_dir / "sentinel2_rgb.tif", mpp=10) as reader:
        grid = base_grid(reader, 10.0, None)
        assert (grid.scale, grid.rows, grid.cols) == (1.0, 7, 7)
        plan = plan_slide(reader, grid, list(SATELLITE), 0.95)
        assert plan.counts() == {"1x": 49, "2x": 9, "3x": 1, "4x": 0}
        np.testing.assert_array_equal(plan.regions[2], [[0, 0]])


def test_prepare_keeps_tissue_regions_and_embeds_background_tiles_for_larger_ones(
    tmp_path, slide_on_glass, tiny_encoder, tiny_vae
):
    """20x keeps the 24 tissue tiles; the 2.5x region (37.5% tissue, threshold 0.3) needs all 64 base tiles,
    so the 20x samples are a non-contiguous subset of the embedded tiles."""
    import tifffile
    import torch

    from zoomldm.data.prepare import PrepareSettings, prepare_dataset
    from zoomldm.data.store import open_store

    settings = PrepareSettings(levels=("20x", "2.5x"), tissue_threshold=(0.5, 0.3), batch_size=10)
    report = prepare_dataset(
        slide_on_glass.parent, tmp_path / "g.zarr", tiny_encoder, tiny_vae, settings, progress=False
    )
    assert report.totals == {"20x": 24, "2_5x": 1}
    root = open_store(tmp_path / "g.zarr")
    coords = root["20x"]["coords"][:]
    assert sorted(map(tuple, coords.tolist())) == sorted(
        (256 * c, 256 * r) for r in range(4) for c in range(6)
    )
    with tifffile.TiffFile(slide_on_glass) as tif:
        pixels = tif.series[0].levels[0].asarray()
    images = np.stack([pixels[y : y + 256, x : x + 256] for x, y in coords])
    with torch.no_grad():
        direct = tiny_vae.encode(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).latents
    stored = torch.from_numpy(root["20x"]["latents"][:].astype(np.float32))
    assert (stored - direct).abs().max() <= 2e-3 * direct.abs().max()
    # the 2.5x grid holds the tissue tiles' embeddings (equal to the 20x grids) and the glass tiles' too
    big = root["2_5x"]["ssl"][0]
    for (x, y), grid in zip(coords, root["20x"]["ssl"][:], strict=True):
        np.testing.assert_array_equal(big[:, y // 256, x // 256], grid[:, 0, 0])
    assert np.abs(big[:, 7, 7].astype(np.float32)).sum() > 0  # a glass tile was embedded, not left empty
