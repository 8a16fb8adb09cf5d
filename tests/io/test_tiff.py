"""Pyramidal TIFF output: read back with OpenSlide (generic tiled TIFF) and tifffile (OME-TIFF), streamed."""

from __future__ import annotations

import tracemalloc

import numpy as np
import openslide
import pytest
import tifffile
import torch
from diffusers.models.autoencoders.vae import DecoderOutput
from PIL import Image

from zoomldm.errors import ZoomLDMError
from zoomldm.io import PyramidalTiffWriter, level_shapes, package_version, write_tiff
from zoomldm.io.tiff import read_provenance
from zoomldm.sampling.decode import DecodeConfig, decode_large, decode_large_to

MPP = 0.5


@pytest.fixture(scope="module")
def he_image(data_dir) -> np.ndarray:
    """A 1000×1300 crop (not a multiple of 256) of the real H&E test image."""
    return np.asarray(Image.open(data_dir / "brca_001.jpeg").convert("RGB"))[1500:2500, 1000:2300].copy()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def _no_leftovers(folder) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_level_shapes_halve_until_one_tile():
    assert level_shapes(4096, 4096) == [(4096, 4096), (2048, 2048), (1024, 1024), (512, 512), (256, 256)]
    assert level_shapes(1000, 1300) == [(1000, 1300), (500, 650), (250, 325), (125, 163)]
    assert level_shapes(100, 70) == [(100, 70)]
    assert level_shapes(100, 70, levels=3) == [(100, 70), (50, 35), (25, 18)]


def test_generic_tiff_lossless_reads_back_in_openslide(tmp_path, he_image):
    path = write_tiff(tmp_path / "out.tif", he_image, mpp=MPP, compression="zlib", metadata={"seed": 11})
    _no_leftovers(tmp_path)

    slide = openslide.OpenSlide(path)
    try:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert slide.level_count == 4
        assert slide.level_dimensions == ((1300, 1000), (650, 500), (325, 250), (163, 125))
        for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y):
            assert float(slide.properties[key]) == pytest.approx(MPP, rel=1e-6)
        level0 = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
        np.testing.assert_array_equal(level0, he_image)  # lossless: exact
        level1 = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1]).convert("RGB"))
    finally:
        slide.close()
    record = read_provenance(path)
    # the reduced level is a 2×2 box average: PIL's independent implementation agrees within rounding
    reference = np.asarray(Image.fromarray(he_image).reduce(2))
    assert np.abs(level1.astype(int) - reference.astype(int)).max() <= 1
    assert record == {"seed": 11, "mpp": MPP, "zoomldm_version": package_version()}

    with tifffile.TiffFile(path) as tif:
        assert not tif.is_ome and len(tif.pages) == 4
        for k, page in enumerate(tif.pages):
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
            assert page.subfiletype == (0 if k == 0 else 1)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            assert not page.subifds  # generic tiled TIFF: levels in the main IFD chain
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            xres = page.tags["XResolution"].value
            assert xres[0] / xres[1] == pytest.approx(1 / (MPP * 1e-4) * page.shape[1] / 1300, rel=1e-6)


def test_generic_tiff_jpeg_quality(tmp_path, he_image):
    path = write_tiff(tmp_path / "q90.tif", he_image, mpp=MPP, compression="jpeg", quality=90)
    small = write_tiff(tmp_path / "q50.tif", he_image, mpp=MPP, compression="jpeg", quality=50)
    with openslide.OpenSlide(path) as slide:
        assert slide.level_count == 4
        level0 = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    with tifffile.TiffFile(path) as tif:
        assert {page.compression for page in tif.pages} == {tifffile.COMPRESSION.JPEG}
    # measured 43.6 dB at quality 90 on this crop; 38 dB is visually lossless for H&E
    assert _psnr(level0, he_image) > 38.0
    assert small.stat().st_size < 0.8 * path.stat().st_size


def test_ome_tiff_levels_and_physical_size(tmp_path, he_image):
    path = write_tiff(
        tmp_path / "out.ome.tif", he_image, mpp=MPP, compression="zlib", ome=True, metadata={"seed": 5}
    )
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        # reduced levels are subIFDs of the full-resolution page, and (for OpenSlide) main-chain twins
        assert len(tif.pages) == 4 and len(tif.series) == 1
        series = tif.series[0]
        assert [level.shape for level in series.levels] == [
            (1000, 1300, 3),
            (500, 650, 3),
            (250, 325, 3),
            (125, 163, 3),
        ]
        np.testing.assert_array_equal(series.levels[0].asarray(), he_image)
        assert len(tif.pages[0].subifds) == 3
        assert [level.keyframe.subfiletype for level in series.levels] == [0, 1, 1, 1]
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]
    pixels = ome["Image"]["Pixels"]
    assert pixels["PhysicalSizeX"] == pytest.approx(MPP, rel=1e-9) and pixels["PhysicalSizeXUnit"] == "µm"
    assert pixels["PhysicalSizeY"] == pytest.approx(MPP, rel=1e-9) and pixels["PhysicalSizeYUnit"] == "µm"
    entries = ome["StructuredAnnotations"]["MapAnnotation"]["Value"]["M"]
    assert {"K": "seed", "value": 5} in entries  # the provenance as an OME MapAnnotation (JSON values)
    assert read_provenance(path)["seed"] == 5


def test_streamed_rows_equal_in_memory_write_and_bad_input(tmp_path, he_image):
    reference = write_tiff(tmp_path / "ref.tif", he_image, compression="zlib")
    with PyramidalTiffWriter(tmp_path / "rows.tif", 1000, 1300, compression="zlib") as writer:
        for y in range(0, 1000, 37):  # chunks that do not line up with tiles or level pairs
            writer.write_rows(y, he_image[y : y + 37])
        assert writer.rows_written == 1000
    with tifffile.TiffFile(reference) as a, tifffile.TiffFile(tmp_path / "rows.tif") as b:
        assert len(a.pages) == len(b.pages) == 4
        for pa, pb in zip(a.pages, b.pages, strict=True):
            np.testing.assert_array_equal(pa.asarray(), pb.asarray())

    writer = PyramidalTiffWriter(tmp_path / "bad.tif", 100, 80, compression="zlib")
    with pytest.raises(ZoomLDMError, match=r"\[n, 80, 3\]"):
        writer.write_rows(0, np.zeros((4, 81, 3), np.uint8))
    with pytest.raises(ZoomLDMError, match="in order"):
        writer.write_rows(5, np.zeros((4, 80, 3), np.uint8))
    writer.write_rows(0, np.zeros((40, 80, 3), np.uint8))
    with pytest.raises(ZoomLDMError, match="received 40 of 100 rows"):
        writer.close()
    with pytest.raises(RuntimeError), PyramidalTiffWriter(tmp_path / "crash.tif", 600, 80) as crashing:
        crashing.write_rows(0, np.zeros((300, 80, 3), np.uint8))
        raise RuntimeError("decoder crashed")
    assert not (tmp_path / "bad.tif").exists() and not (tmp_path / "crash.tif").exists()
    _no_leftovers(tmp_path)
    for kwargs, match in [
        ({"compression": "webp"}, "compression"),
        ({"tile_size": 100}, "multiple of 16"),
        ({"mpp": -1.0}, "mpp"),
        ({"quality": 0}, "quality"),
    ]:
        with pytest.raises(ZoomLDMError, match=match):
            PyramidalTiffWriter(tmp_path / "x.tif", 10, 10, **kwargs)
    _no_leftovers(tmp_path)


def test_memory_is_bounded_by_a_band(tmp_path, he_image):
    """Stream a 6144×2048 image (37.7 MB of pixels) made band by band: the writer never holds it."""
    height, width = 6144, 2048
    band = np.concatenate([he_image[:64], he_image[64:128, : width - 1300]], axis=1)
    tracemalloc.start()
    try:
        with PyramidalTiffWriter(tmp_path / "tall.tif", height, width, mpp=0.25) as writer:
            for y in range(0, height, 64):
                writer.write_rows(y, np.roll(band, y, axis=1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # measured ≈ 12 MB: a few 256-row bands (1.5 MB each) in flight plus the encoder's buffers
    assert peak < 16e6 < height * width * 3 / 2
    with openslide.OpenSlide(tmp_path / "tall.tif") as slide:
        assert slide.level_dimensions[0] == (width, height) and slide.level_count == 6
        tile = np.asarray(slide.read_region((0, 6080), 0, (width, 64)).convert("RGB"))
    assert _psnr(tile, np.roll(band, 6080, axis=1)) > 35.0  # measured 37.9 dB (the rolled band has seams)


class _NearestDecoder(torch.nn.Module):
    """A pixel-local stand-in VQ decoder (nearest ×4 upsampling of tanh of the latent)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("unused", torch.zeros(1))

    def decode(self, h: torch.Tensor) -> DecoderOutput:
        return DecoderOutput(sample=torch.tanh(torch.nn.functional.interpolate(h, scale_factor=4)))


def test_decoder_streams_into_the_tiff(tmp_path):
    latent = torch.randn(3, 70, 90, generator=torch.Generator().manual_seed(3))
    decoder, config = _NearestDecoder(), DecodeConfig(window=32, stride=16)
    expected = decode_large(decoder, latent, config, progress=False)
    with PyramidalTiffWriter(tmp_path / "decoded.tif", 280, 360, mpp=MPP, compression="zlib") as writer:
        stats = decode_large_to(decoder, latent, writer, config, progress=False)
    assert (stats.height, stats.width) == (280, 360)
    with openslide.OpenSlide(tmp_path / "decoded.tif") as slide:
        assert slide.level_count == 2
        got = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    np.testing.assert_array_equal(got, expected)
