"""Generated pyramidal TIFFs open as a multi-level pyramid with the right µm/px in every reader users have:
OpenSlide, tifffile (series levels, ``imread(level=)``, zarr), Pillow, tiffslide; OME-XML validates against
the OME 2016-06 schema; the provenance round-trips (also from files of the previous layout).

Bio-Formats / QuPath cannot run here; the layout follows their documented rules (see ``zoomldm.io.tiff``)
and the structural facts those rules rest on are checked below (SubIFDs, NewSubfileType, main-chain twins).
"""

from __future__ import annotations

import json

import numpy as np
import openslide
import pytest
import tifffile
import tiffslide
import zarr
from PIL import Image

from zoomldm.errors import InputError
from zoomldm.io import package_version, write_tiff
from zoomldm.io.tiff import OME_XSD, XMP_TAG, _ome_record, read_provenance

MPP = 0.5
SHAPES = [(600, 700, 3), (300, 350, 3), (150, 175, 3)]
# "shape" inside a nested setting is what made tifffile read the old JSON ImageDescription as its own
# "shaped" series metadata (KeyError: 'shape'); "5" checks that strings stay strings
METADATA = {"seed": 7, "command": "generate", "latent": {"shape": [3, 150, 175]}, "label": "5"}
VARIANTS = {
    "tiff-jpeg": {},
    "tiff-zlib-bigtiff": {"compression": "zlib", "bigtiff": True},
    "ome-jpeg": {"ome": True},
    "ome-zlib-bigtiff": {"ome": True, "compression": "zlib", "bigtiff": True},
    "ome-none": {"ome": True, "compression": "none"},
}


@pytest.fixture(scope="module")
def image(data_dir) -> np.ndarray:
    """A 600×700 crop of the real H&E test image (neither side a multiple of the 256 tile)."""
    return np.asarray(Image.open(data_dir / "brca_001.jpeg").convert("RGB"))[1800:2400, 1200:1900].copy()


@pytest.fixture(scope="module")
def written(tmp_path_factory, image) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("readers")
    paths = {}
    for name, options in VARIANTS.items():
        suffix = ".ome.tif" if options.get("ome") else ".tif"
        paths[name] = write_tiff(
            folder / f"{name}{suffix}", image, mpp=MPP, levels=3, metadata=METADATA, **options
        )
    return paths


def _lossless(name: str) -> bool:
    return "jpeg" not in name


def _reference_levels(path) -> list[np.ndarray]:
    """The levels as stored, read page by page with tifffile (main chain or SubIFDs)."""
    with tifffile.TiffFile(path) as tif:
        return [level.asarray() for level in tif.series[0].levels]


@pytest.mark.parametrize("name", VARIANTS)
def test_openslide_sees_every_level_and_the_pixel_size(written, image, name):
    with openslide.OpenSlide(written[name]) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert slide.level_count == 3
        assert slide.level_dimensions == ((700, 600), (350, 300), (175, 150))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y):
            assert float(slide.properties[key]) == pytest.approx(MPP, rel=1e-6)
        levels = [
            np.asarray(slide.read_region((0, 0), k, size).convert("RGB"))
            for k, size in enumerate(slide.level_dimensions)
        ]
    for got, stored in zip(levels, _reference_levels(written[name]), strict=True):
        np.testing.assert_array_equal(got, stored)  # the level OpenSlide reads is the stored one
    if _lossless(name):
        np.testing.assert_array_equal(levels[0], image)


@pytest.mark.parametrize("name", VARIANTS)
def test_tifffile_series_levels_imread_and_zarr(written, image, name):
    path = written[name]
    with tifffile.TiffFile(path) as tif:
        assert not tif.is_shaped and tif.is_ome == name.startswith("ome")
        assert tif.is_bigtiff == ("bigtiff" in name)
        assert len(tif.series) == 1  # OME twins are not an extra series
        series = tif.series[0]
        assert series.kind == ("ome" if name.startswith("ome") else "generic")
        assert series.axes == "YXS" and series.shape == SHAPES[0]
        assert [level.shape for level in series.levels] == SHAPES
        assert [level.keyframe.subfiletype for level in series.levels] == [0, 1, 1]
        for level, shape in zip(series.levels, SHAPES, strict=True):  # µm/px of each level, in px/cm
            page = level.keyframe
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            for tag, size, full in (("XResolution", shape[1], 700), ("YResolution", shape[0], 600)):
                numerator, denominator = page.tags[tag].value
                assert 1e4 / (numerator / denominator) == pytest.approx(MPP * full / size, rel=1e-6)
        level0 = series.levels[0].asarray()
    for k, shape in enumerate(SHAPES):
        assert tifffile.imread(path, level=k).shape == shape
    group = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    assert sorted(group.array_keys()) == ["0", "1", "2"]
    assert [group[str(k)].shape for k in range(3)] == SHAPES
    np.testing.assert_array_equal(group["1"][:], tifffile.imread(path, level=1))
    np.testing.assert_array_equal(group["0"][:], level0)
    if _lossless(name):
        np.testing.assert_array_equal(level0, image)


@pytest.mark.parametrize("name", VARIANTS)
def test_pillow_opens_and_loads_the_first_page(written, image, name):
    with Image.open(written[name]) as first:
        assert first.size == (700, 600)
        first.load()
        pixels = np.asarray(first.convert("RGB"))
    np.testing.assert_array_equal(pixels, _reference_levels(written[name])[0])
    if _lossless(name):
        np.testing.assert_array_equal(pixels, image)


@pytest.mark.parametrize("name", VARIANTS)
def test_tiffslide_sees_every_level_and_the_pixel_size(written, name):
    with tiffslide.TiffSlide(written[name]) as slide:
        assert slide.level_count == 3
        assert slide.level_dimensions == ((700, 600), (350, 300), (175, 150))
        assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(MPP, rel=1e-6)
        assert float(slide.properties["tiffslide.mpp-y"]) == pytest.approx(MPP, rel=1e-6)
        level2 = slide.read_region((0, 0), 2, (175, 150), as_array=True)
    np.testing.assert_array_equal(level2[..., :3], _reference_levels(written[name])[2])


@pytest.mark.parametrize("name", ["ome-jpeg", "ome-zlib-bigtiff"])
def test_ome_levels_are_subifds_with_main_chain_twins_sharing_the_tiles(written, name):
    """OME rule: reduced levels in SubIFDs of the full-resolution IFD (NewSubfileType 1). OpenSlide rule:
    reduced levels in the main chain. The twins are IFDs identical to the SubIFDs (same tile offsets), so
    the pixels are stored once; TiffData maps only IFD 0, and Bio-Formats sets NewSubfileType-1 IFDs apart
    from the planes."""
    with tifffile.TiffFile(written[name]) as tif:
        tif.pages.useframes = False
        first = tif.pages.first
        assert first.subfiletype == 0 and len(first.subifds) == 2
        subifds = list(tifffile.TiffPages(first))
        assert len(tif.pages) == 3
        for twin, source in zip([tif.pages[1], tif.pages[2]], subifds, strict=True):
            assert twin.subfiletype == source.subfiletype == 1 and not twin.subifds
            assert {c: t.value for c, t in twin.tags.items()} == {c: t.value for c, t in source.tags.items()}
            assert twin.dataoffsets == source.dataoffsets and min(source.databytecounts) > 0
        assert '<TiffData IFD="0" PlaneCount="1"/>' in tif.ome_metadata
    plain = written[name.replace("ome", "tiff")]  # the same pixels and options as a generic TIFF
    # the twins add a few hundred bytes of IFDs, not a second copy of the reduced levels (~25% of the file)
    assert written[name].stat().st_size < plain.stat().st_size * 1.02


@pytest.mark.parametrize("name", ["ome-jpeg", "ome-zlib-bigtiff"])
def test_ome_xml_validates_against_the_ome_2016_06_schema(written, name):
    xmlschema = pytest.importorskip("xmlschema")
    schema = xmlschema.XMLSchema(str(OME_XSD))
    assert schema.target_namespace == "http://www.openmicroscopy.org/Schemas/OME/2016-06"
    with tifffile.TiffFile(written[name]) as tif:
        omexml = tif.ome_metadata
    schema.validate(omexml)  # raises with the reason when invalid
    pixels = tifffile.xml2dict(omexml)["OME"]["Image"]["Pixels"]
    assert pixels["PhysicalSizeX"] == pytest.approx(MPP) and pixels["PhysicalSizeXUnit"] == "µm"
    assert pixels["PhysicalSizeY"] == pytest.approx(MPP) and pixels["PhysicalSizeYUnit"] == "µm"
    assert (pixels["SizeX"], pixels["SizeY"], pixels["SizeC"]) == (700, 600, 3)
    # the check can fail: an invalid unit and an element out of order are rejected
    assert not schema.is_valid(omexml.replace('PhysicalSizeXUnit="µm"', 'PhysicalSizeXUnit="microns"'))
    assert not schema.is_valid(omexml.replace("<Description>", "<Name>").replace("</Description>", "</Name>"))


@pytest.mark.parametrize("name", VARIANTS)
def test_provenance_round_trips_outside_the_image_description(written, name):
    expected = dict(METADATA, mpp=MPP, zoomldm_version=package_version())
    assert read_provenance(written[name]) == expected
    with tifffile.TiffFile(written[name]) as tif:
        page = tif.pages.first
        assert XMP_TAG in page.tags and b"<x:xmpmeta" in page.tags[XMP_TAG].value
        assert not page.description.lstrip().startswith("{")  # nothing a reader takes for its own JSON
        if tif.is_ome:  # OME tools show it as a key-value MapAnnotation; values read back exactly
            assert _ome_record(tif.ome_metadata) == expected


def _old_layout(path, image: np.ndarray, record: dict, ome: bool) -> None:
    """A file as the previous writer made it: provenance JSON as the ImageDescription (generic TIFF) or
    as the OME Image Description (OME-TIFF)."""
    description = json.dumps(record, sort_keys=True)
    levels = [image, image[::2, ::2], image[::4, ::4]]
    options = dict(photometric="rgb", tile=(256, 256), compression="zlib")
    with tifffile.TiffWriter(path, ome=ome) as tif:
        if ome:
            tif.write(levels[0], subifds=2, metadata={"axes": "YXS", "Description": description}, **options)
        else:
            tif.write(levels[0], metadata=None, description=description, **options)
        for level in levels[1:]:
            tif.write(level, subfiletype=1, metadata=None, **options)


def test_old_layout_breaks_tifffile_and_its_provenance_is_still_read(tmp_path, image):
    record = dict(METADATA, mpp=MPP, zoomldm_version="0.0.9")
    _old_layout(tmp_path / "old.tif", image, record, ome=False)
    with tifffile.TiffFile(tmp_path / "old.tif") as tif:
        assert tif.is_shaped  # the defect: tifffile takes our JSON for its "shaped" metadata
        with pytest.raises(KeyError, match="shape"):
            _ = tif.series[0].levels
    assert read_provenance(tmp_path / "old.tif") == record
    _old_layout(tmp_path / "old.ome.tif", image, record, ome=True)
    assert read_provenance(tmp_path / "old.ome.tif") == record


def test_read_provenance_of_foreign_and_broken_files(tmp_path, image):
    tifffile.imwrite(tmp_path / "plain.tif", image[:64, :64], photometric="rgb", metadata=None)
    assert read_provenance(tmp_path / "plain.tif") is None
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not a tiff at all")
    with pytest.raises(InputError, match=r"broken\.tif: not a readable TIFF"):
        read_provenance(tmp_path / "broken.tif")
    with pytest.raises(InputError, match="not found"):
        read_provenance(tmp_path / "missing.tif")


def test_ome_tiff_is_chosen_by_either_ome_suffix():
    from zoomldm.sampling.output import check_output_path, is_ome_path

    for name in ("a.ome.tif", "a.OME.TIFF", "runs/b.ome.tiff"):
        assert is_ome_path(name) and check_output_path(name, 64, 64) is not None
    for name in ("a.tif", "ome.tif", "a.tiff", "a.png"):
        assert not is_ome_path(name)


def test_single_level_ome_tiff_has_no_subifds_and_opens_everywhere(tmp_path, image):
    path = write_tiff(tmp_path / "one.ome.tif", image[:200, :240], mpp=MPP, ome=True, metadata={"seed": 1})
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and len(tif.pages) == 1 and not tif.pages.first.subifds
        assert [level.shape for level in tif.series[0].levels] == [(200, 240, 3)]
    with openslide.OpenSlide(path) as slide:
        assert slide.level_count == 1 and float(slide.properties["openslide.mpp-x"]) == pytest.approx(MPP)
    assert read_provenance(path)["seed"] == 1
