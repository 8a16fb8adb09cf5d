"""Damaged slides and images: every reader backend ends in one InputError line that names the file and says
why (truncated file, unknown image format, unreadable tile at level L (x, y), empty file), with the
library's exception chained (issue 12).

The damaged files are copies of real ones: a pyramidal JPEG TIFF cut from brca_001.jpeg, with its first
tiles overwritten or the file cut short, and PNG / JPEG copies truncated after their header.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from zoomldm.data.readers import open_image
from zoomldm.data.slides import find_slides
from zoomldm.errors import InputError

TIFF_BACKENDS = ["openslide", "tiffslide", "tifffile"]


def _one_line(message: str, path: Path) -> None:
    assert "\n" not in message and str(path) in message, message


@pytest.fixture(scope="module")
def zeroed_tiles_slide(tmp_path_factory, brca_image) -> Path:
    """A 1024² pyramidal JPEG TIFF (3 levels) whose first four level-0 tiles are overwritten with zeros:
    the file opens (its IFDs are intact) but those tiles do not decode."""
    from _fixtures import write_pyramid_tiff

    path = write_pyramid_tiff(
        tmp_path_factory.mktemp("zeroed") / "slide.tif", brca_image[:1024, :1024], mpp=0.5, levels=3
    )
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        spans = list(zip(page.dataoffsets[:4], page.databytecounts[:4], strict=True))
    data = bytearray(path.read_bytes())
    for offset, count in spans:
        data[offset : offset + count] = bytes(count)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("backend", TIFF_BACKENDS)
def test_unreadable_tile_is_named(zeroed_tiles_slide, backend):
    with open_image(zeroed_tiles_slide, backend=backend) as reader:
        assert reader.level_dimensions == [(1024, 1024), (512, 512), (256, 256)]
        with pytest.raises(InputError) as err:
            reader.read(256, 0, 256, 256, (256, 256))  # level 0, the second tile
    message = str(err.value)
    _one_line(message, zeroed_tiles_slide)
    assert "unreadable tile at level 0 (256, 0)" in message and "damaged pixel data" in message
    assert err.value.__cause__ is not None  # OpenSlideError / imagecodecs' Jpeg8Error, kept chained


def test_intact_levels_of_a_damaged_slide_still_read(zeroed_tiles_slide):
    with open_image(zeroed_tiles_slide, backend="tifffile") as reader:
        assert reader.read(0, 0, 1024, 1024, (256, 256)).shape == (256, 256, 3)  # level 2 is intact


@pytest.mark.parametrize("fraction", [0.5, 0.8])
def test_truncated_tiff(tmp_path, brca_slide_1024, caplog, fraction):
    """Cut short: either no backend opens it (one line listing why each failed) or a tile of it cannot
    be read; tifffile's own warnings ("invalid page offset") do not reach the terminal."""
    data = brca_slide_1024.read_bytes()
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(InputError) as err:
        with open_image(path) as reader:
            w, h = reader.dimensions
            for level in range(reader.level_count):
                ds = reader.level_downsamples[level]
                reader.read(0, 0, w, h, (int(w / ds), int(h / ds)))
    _one_line(str(err.value), path)
    assert "unreadable tile at level" in str(err.value) or "cannot read" in str(err.value)
    assert not [r for r in caplog.records if r.name == "tifffile"]  # would print below our one line


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_truncated_pillow_images(tmp_path, brca_image, fmt):
    full = tmp_path / f"full.{fmt}"
    Image.fromarray(brca_image[:512, :512]).save(full)
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert open_image(full).dimensions == (512, 512)
    with pytest.raises(InputError, match="pillow: truncated file") as err:
        open_image(path)
    _one_line(str(err.value), path)


def test_empty_directory_and_foreign_files(tmp_path):
    cases = {}
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    cases[empty] = "empty file"
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    cases[folder] = "is a directory"
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    cases[text] = "pillow: unknown image format"
    noise = tmp_path / "noise.tif"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    cases[noise] = "cannot read"
    for path, reason in cases.items():
        with pytest.raises(InputError) as err:
            open_image(path)
        _one_line(str(err.value), path)
        assert reason in str(err.value)


def test_slide_list_csv_checks(tmp_path, brca_slide_1024):
    binary = tmp_path / "slides.csv"
    binary.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(InputError, match="not a UTF-8 CSV file"):
        find_slides(tmp_path, binary)
    for value in ("nan", "-0.5", "inf", "0"):
        listing = tmp_path / f"mpp_{value}.csv"
        listing.write_text(f"path,mpp\n{brca_slide_1024},{value}\n")
        with pytest.raises(InputError, match=rf"line 2: mpp '{value}' must be a positive number"):
            find_slides(tmp_path, listing)
    blank = tmp_path / "blank.csv"
    blank.write_text("path,mpp\n,0.5\n")
    with pytest.raises(InputError, match="line 2: the 'path' column is empty"):
        find_slides(tmp_path, blank)
    with pytest.raises(InputError, match="--mpp nan must be a positive number"):
        find_slides(brca_slide_1024.parent, mpp=float("nan"))
    assert [s.mpp for s in find_slides(brca_slide_1024.parent, mpp=0.5)] == [0.5]
