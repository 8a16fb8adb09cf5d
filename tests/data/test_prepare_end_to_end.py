"""End to end: a real pyramidal slide and a real Sentinel-2 scene through prepare_dataset.

Every stored sample is checked against an independent computation: the region is re-read from the
file with tifffile (another library than the OpenSlide reader used by prepare), VQ-encoded in float32
and compared with the stored float16 latent; the stored SSL grid is compared with the encoder's
embedding of the base-resolution tiles the region covers.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from zoomldm.data.dataset import MultiScaleDataset
from zoomldm.data.extract import SlideSource
from zoomldm.data.prepare import PrepareSettings, prepare_dataset, settings_path
from zoomldm.data.store import open_store
from zoomldm.models.encoders import encode_region_grid

#: float16 storage of a latent: relative rounding 2^-11; plus float32 thread-order noise
LATENT_RTOL = 2e-3
#: SSL embeddings are stored as float16
GRID_RTOL = 2e-3


@pytest.fixture(scope="module")
def slide_store(tmp_path_factory, brca_slide, tiny_encoder, tiny_vae):
    store = tmp_path_factory.mktemp("stores") / "brca.zarr"
    settings = PrepareSettings(domain="pathology", levels=(0, 1, 2, 3), tissue_threshold=0.0, batch_size=16)
    report = prepare_dataset(
        brca_slide.parent,
        store,
        tiny_encoder,
        tiny_vae,
        settings,
        vae_info={"source": "test"},
        progress=False,
    )
    return store, report


def _pyramid_level(path, level: int) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[level].asarray()


def test_counts_grid_sizes_and_metadata(slide_store, tiny_encoder):
    store, report = slide_store
    assert [s.status for s in report.slides] == ["committed"]
    # 2048² base px at 20x: (2048 / (256·2^k))² regions per level with threshold 0
    assert report.totals == {"20x": 64, "10x": 16, "5x": 4, "2_5x": 1}
    root = open_store(store)
    for key, n, g in (("20x", 64, 1), ("10x", 16, 2), ("5x", 4, 4), ("2_5x", 1, 8)):
        assert root[key]["latents"].shape == (n, 3, 64, 64) and root[key]["latents"].dtype == np.float16
        assert root[key]["ssl"].shape == (n, 32, g, g)  # unpooled, true grid size
        assert root[key].attrs["grid_size"] == g
        np.testing.assert_array_equal(root[key]["mpp"][:], np.full(n, 0.5 * g, np.float32))
        coords = root[key]["coords"][:]
        assert coords.min() >= 0 and coords.max() <= 2048 - 256 * g and (coords % (256 * g) == 0).all()
        assert len({tuple(c) for c in coords}) == n  # no duplicates
    attrs = root.attrs.asdict()
    assert attrs["domain"] == "pathology" and attrs["tile_size"] == 256
    assert attrs["encoder"] == tiny_encoder.describe()
    assert attrs["resampling"].startswith("lanczos")
    assert attrs["identity"]["levels"] == ["20x", "10x", "5x", "2.5x"]
    assert [str(s) for s in root["slides/id"][:]] == ["brca_2048"]
    assert root["slides/mpp"][0] == pytest.approx(0.5)
    assert settings_path(store).endswith(".prepare.json")


def test_every_latent_is_its_region_and_decodes_like_a_direct_encode(slide_store, brca_slide, tiny_vae):
    """Every stored latent equals the float32 encoding of its region up to float16 rounding; decoding (the
    decoder's sensitivity to that rounding) is checked on up to 8 samples per level to bound CPU time."""
    store, _ = slide_store
    root = open_store(store)
    for level, key in enumerate(("20x", "10x", "5x", "2_5x")):
        pixels = _pyramid_level(brca_slide, level)  # the pyramid holds each 2^k level: no resampling needed
        coords = root[key]["coords"][:]
        images = np.stack(
            [pixels[y >> level : (y >> level) + 256, x >> level : (x >> level) + 256] for x, y in coords]
        )
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            direct = tiny_vae.encode(x).latents
            stored = torch.from_numpy(root[key]["latents"][:].astype(np.float32))
            assert (stored - direct).abs().max().item() <= LATENT_RTOL * direct.abs().max().item(), key
            pick = slice(0, 8)
            err_direct = (tiny_vae.decode(direct[pick]).sample.clamp(-1, 1) - x[pick]).abs().mean().item()
            err_stored = (tiny_vae.decode(stored[pick]).sample.clamp(-1, 1) - x[pick]).abs().mean().item()
        # the float16 storage adds at most 1% to the autoencoder's own reconstruction error
        assert err_stored <= err_direct * 1.01 + 1e-4, (key, err_stored, err_direct)


def test_grids_are_the_base_tile_embeddings_shared_by_all_levels(slide_store, brca_slide, tiny_encoder):
    store, _ = slide_store
    root = open_store(store)
    base = _pyramid_level(brca_slide, 0)
    expected = encode_region_grid(tiny_encoder, base).numpy()  # [32, 8, 8]: every base tile of the slide
    scale = np.abs(expected).max()
    for key, g in (("20x", 1), ("10x", 2), ("5x", 4), ("2_5x", 8)):
        grids = root[key]["ssl"][:].astype(np.float32)
        for (x, y), grid in zip(root[key]["coords"][:], grids, strict=True):
            r, c = y // 256, x // 256
            np.testing.assert_allclose(grid, expected[:, r : r + g, c : c + g], atol=GRID_RTOL * scale)
    # one embedding per base tile, reused bit for bit: the 2.5x grid is the 64 stored 20x grids
    big = root["2_5x"]["ssl"][0]
    small = {
        tuple(c): s[:, 0, 0] for c, s in zip(root["20x"]["coords"][:], root["20x"]["ssl"][:], strict=True)
    }
    for (x, y), vector in small.items():
        np.testing.assert_array_equal(big[:, y // 256, x // 256], vector)


def test_dataset_serves_the_store(slide_store):
    store, _ = slide_store
    ds = MultiScaleDataset(store)
    assert len(ds) == 85 and ds.counts == [64, 16, 4, 1] and ds.ssl_dim == 32
    item = ds[64 + 16 + 4]  # the 2.5x sample
    assert item["mag"] == 3 and item["slide"] == "brca_2048" and item["ssl"].shape == (32, 8, 8)
    assert item["latent"].dtype == torch.float32 and item["latent"].shape == (3, 64, 64)
    tokens = item["ssl"].reshape(32, -1)
    torch.testing.assert_close(tokens.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens.std(0), torch.ones(64), atol=1e-4, rtol=0)


def test_sentinel2_scene_with_satellite_scales(tmp_path, data_dir, tiny_encoder, tiny_vae):
    store = tmp_path / "s2.zarr"
    settings = PrepareSettings(domain="satellite", mpp=10.0, batch_size=16)  # the scene is 10 m/px (README)
    report = prepare_dataset(
        [SlideSource("sentinel2", str(data_dir / "sentinel2_rgb.tif"))],
        store,
        tiny_encoder,
        tiny_vae,
        settings,
        progress=False,
    )
    # 1933×1947 px at native resolution → 7×7 base tiles; 4x needs 2048 px, so it has no region here
    assert report.totals == {"1x": 49, "2x": 9, "3x": 1, "4x": 0}
    root = open_store(store)
    assert root.attrs["unit"] == "m/px" and root.attrs["domain"] == "satellite"
    np.testing.assert_array_equal(root["2x"]["mpp"][:], np.full(9, 20.0, np.float32))
    assert root["3x"]["ssl"].shape == (1, 32, 4, 4) and root["4x"]["ssl"].shape == (0, 32, 8, 8)
    # the 3x sample is the 1024² corner region, downsampled 4× with the recorded (Lanczos) filter
    with Image.open(data_dir / "sentinel2_rgb.tif") as scene:
        region = scene.convert("RGB").crop((0, 0, 1024, 1024)).resize((256, 256), Image.Resampling.LANCZOS)
    x = torch.from_numpy(np.array(region)[None]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        direct = tiny_vae.encode(x).latents
    stored = torch.from_numpy(root["3x"]["latents"][:1].astype(np.float32))
    assert (stored - direct).abs().max().item() <= LATENT_RTOL * direct.abs().max().item()
    with Image.open(data_dir / "sentinel2_rgb.tif") as scene:
        grid = encode_region_grid(tiny_encoder, np.asarray(scene.convert("RGB"))[:1024, :1024])
    stored_grid = root["3x"]["ssl"][0].astype(np.float32)
    np.testing.assert_allclose(stored_grid, grid.numpy(), atol=GRID_RTOL * grid.abs().max().item())


def test_georeferenced_scene_with_nodata(tmp_path, data_dir, tiny_encoder, tiny_vae):
    """The Sentinel-2 scene as a GeoTIFF (UTM 33N, 10 m/px) whose right 40 % is nodata: prepare reads the
    resolution from the georeference (no --mpp), skips the regions below the valid-data threshold and
    records the scene's CRS and geotransform, from which each region's bounds follow."""
    import rasterio
    from affine import Affine

    from zoomldm.data.store import region_bounds

    scene = tifffile.imread(data_dir / "sentinel2_rgb.tif")[:1024, :1024]
    bands = np.moveaxis(scene, -1, 0).copy()
    bands[:, :, 614:] = 0  # columns from 614 on: outside the scene
    path = tmp_path / "s2_geo.tif"
    t = (10.0, 0.0, 500_000.0, 0.0, -10.0, 5_200_000.0)
    with rasterio.open(path, "w", driver="GTiff", width=1024, height=1024, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(*t), nodata=0, tiled=True) as dst:  # fmt: skip
        dst.write(bands)
    store = tmp_path / "geo.zarr"
    settings = PrepareSettings(domain="satellite", batch_size=16)  # no mpp: from the georeference
    report = prepare_dataset(
        [SlideSource("s2", str(path))], store, tiny_encoder, tiny_vae, settings, progress=False
    )
    # 4 × 4 base tiles of 256 px; only the two left columns are ≥ 95 % valid (column 2 is 40 % valid)
    assert report.totals["1x"] == 8 and report.totals["2x"] == 2 and report.totals["3x"] == 0
    root = open_store(store)
    np.testing.assert_array_equal(root["1x"]["mpp"][:], np.full(8, 10.0, np.float32))
    geo = root["slides"].attrs["georeference"]["s2"]
    assert (
        geo["crs"].startswith("PROJCS")
        or "UTM" in geo["crs"]
        and geo["transform"][:3] == [10.0, 0.0, 500_000.0]
    )
    x, y = (int(v) for v in root["1x"]["coords"][3])
    assert x < 512 and region_bounds(root, "1x", 3) == (
        500_000.0 + 10 * x,
        5_200_000.0 - 10 * (y + 256),
        500_000.0 + 10 * (x + 256),
        5_200_000.0 - 10 * y,
    )
    assert region_bounds(root, "2x", 0)[2] - region_bounds(root, "2x", 0)[0] == 5120.0
