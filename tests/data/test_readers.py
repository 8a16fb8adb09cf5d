"""Readers: every backend reads the same real slide identically; resolution comes from metadata or an
override, never from the pyramid; the base magnification is chosen by µm/px."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from zoomldm.data.readers import (
    OpenSlideReader,
    PillowReader,
    TifffileReader,
    TiffSlideReader,
    level0_resolution,
    open_image,
    resolution_from_properties,
)
from zoomldm.data.tiling import base_grid, read_region
from zoomldm.errors import ZoomLDMError


def test_all_tiff_backends_agree_on_levels_resolution_and_pixels(brca_slide_1024):
    readers = [cls(brca_slide_1024) for cls in (OpenSlideReader, TiffSlideReader, TifffileReader)]
    reference = readers[0]
    assert reference.level_dimensions == [(1024, 1024), (512, 512), (256, 256)]
    assert reference.level_downsamples == [1.0, 2.0, 4.0]
    region = reference.read(256, 512, 256, 256, (256, 256))
    coarse = reference.read(0, 0, 1024, 1024, (256, 256))  # exactly pyramid level 2, no resampling
    for reader in readers:
        assert reader.level_dimensions == reference.level_dimensions
        assert reader.resolution.value == pytest.approx(0.5) and reader.resolution.unit == "um"
        # the same JPEG tiles decoded by libopenslide / imagecodecs: equal up to decoder rounding
        assert np.abs(reader.read(256, 512, 256, 256, (256, 256)).astype(int) - region).max() <= 2
        assert np.abs(reader.read(0, 0, 1024, 1024, (256, 256)).astype(int) - coarse).max() <= 2
        reader.close()
    with tifffile.TiffFile(brca_slide_1024) as tif:
        np.testing.assert_allclose(coarse, tif.series[0].levels[2].asarray(), atol=2)


def test_open_image_prefers_openslide_and_reads_the_nearest_finer_level(brca_slide_1024):
    with open_image(brca_slide_1024) as reader:
        assert reader.backend == "openslide"
        assert reader.resolution.source == "openslide.mpp-x"
        assert [reader.best_level(d) for d in (1, 1.9, 2, 3.5, 4, 100)] == [0, 0, 1, 1, 2, 2]
        # a 3× downsample reads level 1 (2×) and resizes with an antialiased filter
        out = reader.read(0, 0, 768, 768, (256, 256), resample="box")
        level1 = reader.read(0, 0, 768, 768, (384, 384))
        expected = np.asarray(Image.fromarray(level1).resize((256, 256), Image.Resampling.BOX))
        np.testing.assert_array_equal(out, expected)


def test_base_magnification_is_chosen_by_resolution(brca_slide_1024):
    """The same pixels declared as 40x (0.25 µm/px): 20x base tiles cover 512 level-0 px and come from
    pyramid level 1, the 0.5 µm/px level, without resampling."""
    with open_image(brca_slide_1024, mpp=0.25) as reader:
        grid = base_grid(reader, level0_resolution(reader, "um"), base_mpp=0.5)
        assert (grid.scale, grid.width, grid.rows) == (2.0, 512, 2)
        tile = read_region(reader, grid, 1, 0, span=1)
        np.testing.assert_array_equal(tile, reader.read(0, 512, 512, 512, (256, 256)))
        np.testing.assert_allclose(tile, reader._read_level(1, 0, 512, 256, 256), atol=0)
    with (
        open_image(brca_slide_1024, mpp=1.0) as reader,
        pytest.raises(ZoomLDMError, match="coarser than the base"),
    ):
        base_grid(reader, 1.0, base_mpp=0.5)  # 10x scan: 20x tiles would be upsampled


def test_missing_resolution_names_the_override(data_dir):
    with open_image(data_dir / "sentinel2_rgb.tif") as reader:  # no georeferencing, no resolution unit
        assert reader.resolution is None
        with pytest.raises(
            ZoomLDMError, match=r"sentinel2_rgb\.tif: no m/px resolution.*--mpp.*'mpp' column"
        ):
            level0_resolution(reader, "m")
    with open_image(data_dir / "sentinel2_rgb.tif", mpp=10) as reader:
        assert level0_resolution(reader, "m") == 10
        assert reader.dimensions == (1933, 1947)


def test_geotiff_pixel_scale_gives_metres(tmp_path, data_dir):
    with Image.open(data_dir / "naip_001.jpg") as image:
        pixels = np.asarray(image.convert("RGB"))[:512, :512]
    # GeoKeyDirectory: version 1.1.0, 2 keys: GTModelType = projected (1), ProjLinearUnits = metre (9001)
    geokeys = (1, 1, 0, 2, 1024, 0, 1, 1, 3076, 0, 1, 9001)
    extratags = [(33550, "d", 3, (0.6, 0.6, 0.0), False), (34735, "H", len(geokeys), geokeys, False)]
    tifffile.imwrite(tmp_path / "naip.tif", pixels, photometric="rgb", tile=(256, 256), extratags=extratags)
    with open_image(tmp_path / "naip.tif") as reader:
        assert reader.backend == "tifffile"  # no CRS for rasterio: the pixel scale tag read by tifffile
        assert reader.resolution.unit == "m" and reader.resolution.value == pytest.approx(0.6)
        np.testing.assert_array_equal(reader.read(256, 0, 256, 256, (256, 256)), pixels[:256, 256:])
    # geographic CRS: degrees per pixel converted at the image's latitude (60°: cos = 0.5)
    geokeys = (1, 1, 0, 1, 1024, 0, 1, 2)
    tie = (0.0, 0.0, 0.0, 10.0, 60.0, 0.0)
    extratags = [
        (33550, "d", 3, (1e-5, 1e-5, 0.0), False),
        (33922, "d", 6, tie, False),
        (34735, "H", len(geokeys), geokeys, False),
    ]
    tifffile.imwrite(tmp_path / "geo.tif", pixels, photometric="rgb", extratags=extratags)
    with open_image(tmp_path / "geo.tif") as reader:
        # a CRS (EPSG:4326 by default for a geographic model): read with rasterio (io/geotiff.py), whose
        # m/px is the mean of the two directions, each converted at the scene's centre latitude
        assert reader.backend == "rasterio"
        assert reader.resolution.value == pytest.approx((1e-5 * 111_320 * 0.5 + 1e-5 * 110_574) / 2, rel=1e-3)


def test_pillow_reader_builds_a_pyramid_and_needs_an_override(data_dir):
    with Image.open(data_dir / "naip_001.jpg") as image:
        pixels = np.asarray(image.convert("RGB"))
    with open_image(data_dir / "naip_001.jpg") as reader:
        assert isinstance(reader, PillowReader) and reader.resolution is None
        assert reader.level_dimensions == [(2048, 2048), (1024, 1024), (512, 512)]
        np.testing.assert_array_equal(reader.read(512, 256, 256, 256, (256, 256)), pixels[256:512, 512:768])
        half = reader.read(0, 0, 1024, 1024, (512, 512))  # level 1: 2×2 box average
        expected = pixels[:1024, :1024].reshape(512, 2, 512, 2, 3).mean(axis=(1, 3))
        assert np.abs(half - expected).max() <= 1


def test_properties_lookup_order_and_units():
    assert resolution_from_properties({"openslide.mpp-x": "0.2527", "aperio.MPP": "0.3"}).value == 0.2527
    assert resolution_from_properties({"aperio.MPP": "0.499"}).source == "aperio.MPP"
    assert resolution_from_properties({"openslide.mirax.MPP": "0.24"}).value == 0.24
    assert resolution_from_properties({"hamamatsu.XResolution": "40000"}).value == pytest.approx(0.25)
    cm = {"tiff.XResolution": "20000", "tiff.ResolutionUnit": "centimeter"}
    inch = {"tiff.XResolution": "50800", "tiff.ResolutionUnit": "inch"}
    assert resolution_from_properties(cm).value == pytest.approx(0.5)
    assert resolution_from_properties(inch).value == pytest.approx(0.5)
    assert resolution_from_properties({"tiff.XResolution": "72", "tiff.ResolutionUnit": "none"}) is None
    assert resolution_from_properties({"openslide.mpp-x": "0", "openslide.objective-power": "20"}) is None


def test_unreadable_and_unsupported_files_are_named(tmp_path):
    (tmp_path / "bad.svs").write_bytes(b"II*\x00" + b"\x00" * 100)
    with pytest.raises(ZoomLDMError, match=r"cannot read \S*bad\.svs: openslide: .*; tiffslide: "):
        open_image(tmp_path / "bad.svs")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ZoomLDMError, match="unsupported file type '.txt'"):
        open_image(tmp_path / "notes.txt")
    with pytest.raises(ZoomLDMError, match="image not found"):
        open_image(tmp_path / "missing.tif")
