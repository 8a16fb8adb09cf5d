"""Super-resolution of a georeferenced input (issue 25, item 4): the output is a Cloud-Optimized GeoTIFF
with the input's CRS and a geotransform scaled by the factor — rasterio opens it, its bounds are the
input's within one output pixel, its layout validates — and ``zoomldm view`` opens it; on the small
compat model (64² patches) and a GeoTIFF made from the real Sentinel-2 scene with a projected CRS."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import tifffile

from zoomldm.io.geotiff import validate_cog, write_cog

UTM33N = rasterio.crs.CRS.from_epsg(32633)
TRANSFORM = (10.0, 0.0, 500_000.0, 0.0, -10.0, 5_200_000.0)
FAST = dict(stride=500, inner_steps=1, inversion_steps=1, no_postprocess=True, decode_stride=16)


@pytest.fixture(scope="module")
def geotiff(data_dir, tmp_path_factory):
    scene = tifffile.imread(data_dir / "sentinel2_rgb.tif")[400:656, 600:856]  # 256²: 4 × 4 patches
    path = tmp_path_factory.mktemp("geo") / "s2.tif"
    return write_cog(path, scene, crs=UTM33N.to_wkt(), transform=TRANSFORM, compression="zlib")


def test_superres_of_a_geotiff_is_a_georeferenced_cog(compat_pipe, geotiff, tmp_path):
    out = tmp_path / "sr.tif"
    result = compat_pipe.super_resolve(geotiff, "10x", out=out, progress=False, **FAST)  # k = 2
    assert result.path == out and validate_cog(out) == []
    with rasterio.open(geotiff) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.width == 2 * src.width and dst.height == 2 * src.height
        assert dst.res == (5.0, 5.0) and dst.overviews(1)
        assert all(abs(a - b) <= dst.res[0] for a, b in zip(dst.bounds, src.bounds, strict=True))
    assert result.settings["georeference"]["crs_epsg"] == 32633
    import json

    record = json.loads(out.with_name("sr.json").read_text())
    assert record["settings"]["georeference"]["transform"][0] == 5.0

    from zoomldm.io.tiff import read_provenance
    from zoomldm.viewer.sources import SlideSource

    source = SlideSource(out)  # what `zoomldm view sr.tif` opens
    assert source.info["width"] == 512 and source.tile(source.deepzoom.level_count - 1, 0, 0)
    assert read_provenance(out) is not None  # the run's record survives the COG rewrite


def test_a_region_keeps_its_place_on_the_map(compat_pipe, geotiff, tmp_path):
    out = tmp_path / "region.tif"
    compat_pipe.super_resolve(geotiff, "10x", out=out, region=(64, 128, 128, 64), progress=False, **FAST)
    with rasterio.open(out) as dst:
        assert dst.bounds.left == pytest.approx(500_000.0 + 64 * 5.0)
        assert dst.bounds.top == pytest.approx(5_200_000.0 - 128 * 5.0)
        assert (dst.width, dst.height) == (128, 64)


@pytest.mark.parametrize(
    ("bands", "nodata", "message"),
    [
        (2, None, "2 bands that are not grey + alpha"),
        (3, 0, "every pixel is nodata"),
    ],
)
def test_bad_satellite_inputs_are_one_line(
    tmp_path, capsys, small_checkpoint, small_config, bands, nodata, message
):
    """`zoomldm superres` of a GeoTIFF it cannot use: exit 2 and one line naming the file, no traceback."""
    from affine import Affine

    from _fixtures import run_cli

    path = tmp_path / "bad.tif"
    with rasterio.open(path, "w", driver="GTiff", width=128, height=128, count=bands, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(*TRANSFORM), nodata=nodata) as dst:  # fmt: skip
        dst.write(np.zeros((bands, 128, 128), np.uint8))
    code, _, err = run_cli(
        ["superres", str(path), "--from", "10x", "--checkpoint", str(small_checkpoint), "--config",
         str(small_config), "--out", str(tmp_path / "o.tif")],
        capsys,
    )  # fmt: skip
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0] and "bad.tif" in lines[0], err
    assert "Traceback" not in err


def test_cli_superres_of_a_uint16_geotiff(tmp_path, capsys, small_checkpoint, small_config, data_dir):
    """A uint16 reflectance GeoTIFF (as Sentinel-2 L2A ships): stretched to 8 bits in one note line, then
    super-resolved into a georeferenced COG by the command line."""
    from affine import Affine

    from _fixtures import run_cli

    scene = tifffile.imread(data_dir / "sentinel2_rgb.tif")[:128, :128]
    refl = (np.moveaxis(scene, -1, 0).astype(np.uint16) * 40 + 100).astype(np.uint16)
    path = tmp_path / "l2a.tif"
    with rasterio.open(path, "w", driver="GTiff", width=128, height=128, count=3, dtype="uint16",
                       crs="EPSG:32633", transform=Affine(*TRANSFORM)) as dst:  # fmt: skip
        dst.write(refl)
    out = tmp_path / "l2a_20x.tif"
    code, _, err = run_cli(
        ["superres", str(path), "--from", "10x", "--checkpoint", str(small_checkpoint), "--config",
         str(small_config), "--out", str(out), "--stride", "500", "--inner-steps", "1", "--inversion-steps", "1",
         "--no-postprocess", "--decode-stride", "16"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert sum("uint16 bands stretched to 8 bits" in line for line in err.splitlines()) == 1, err
    with rasterio.open(out) as dst:
        assert dst.crs.to_epsg() == 32633 and dst.res == (5.0, 5.0) and validate_cog(out) == []
