"""PNG provenance round trip and contact-sheet layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zoomldm.errors import ZoomLDMError
from zoomldm.io import contact_sheet, package_version, read_png_metadata, save_png


def test_save_png_round_trips_pixels_and_provenance(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    settings = {"seed": 7, "guidance_scale": 2.0, "magnification": "20x", "sampler": "plms"}
    path = save_png(tmp_path / "sub" / "patch.png", image, settings)

    with Image.open(path) as png:
        assert np.array_equal(np.asarray(png), image)
        assert png.text["seed"] == "7"
        assert png.text["sampler"] == "plms"
        assert png.text["Software"] == f"zoomldm {package_version()}"
    record = read_png_metadata(path)
    assert record == {**settings, "zoomldm_version": package_version()}
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]  # temp file renamed away


def test_save_png_rejects_float_and_bad_keys(tmp_path):
    with pytest.raises(ZoomLDMError, match="uint8"):
        save_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32), {})
    with pytest.raises(ZoomLDMError, match="HxWxC"):
        save_png(tmp_path / "x.png", np.zeros((4, 4, 2), np.uint8), {})
    with pytest.raises(ZoomLDMError, match="metadata key"):
        save_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8), {"zoomldm": 1})
    assert not list(tmp_path.iterdir())


def test_contact_sheet_places_images_row_major():
    images = [np.full((8, 6, 3), 10 * (i + 1), np.uint8) for i in range(5)]
    sheet = contact_sheet(images, ncols=3)
    assert sheet.shape == (16, 18, 3) and sheet.dtype == np.uint8
    for i in range(5):
        row, col = divmod(i, 3)
        assert (sheet[row * 8 : row * 8 + 8, col * 6 : col * 6 + 6] == 10 * (i + 1)).all()
    assert (sheet[8:, 12:] == 255).all()  # the empty sixth cell is background

    padded = contact_sheet(images, ncols=2, padding=2, background=0)
    assert padded.shape == (3 * 8 + 2 * 2, 2 * 6 + 2, 3)
    assert (padded[8:10] == 0).all() and (padded[10:18, 8:14] == 40).all()


def test_contact_sheet_mixed_sizes_and_errors():
    sheet = contact_sheet([np.zeros((4, 4), np.uint8), np.full((6, 2, 3), 9, np.uint8)], ncols=5)
    assert sheet.shape == (6, 8, 3)  # ncols clipped to the number of images, cell = largest image
    assert (sheet[:4, :4] == 0).all() and (sheet[4:, :4] == 255).all() and (sheet[:, 4:6] == 9).all()
    with pytest.raises(ZoomLDMError, match="ncols"):
        contact_sheet([np.zeros((2, 2, 3), np.uint8)], ncols=0)
    with pytest.raises(ZoomLDMError, match="at least one"):
        contact_sheet([], ncols=2)


def test_written_files_get_normal_permissions(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the final file must get the umask's permissions."""
    import os

    from zoomldm.io.images import save_png

    umask = os.umask(0o022)
    try:
        path = save_png(tmp_path / "p.png", np.zeros((4, 4, 3), dtype=np.uint8), {"a": 1})
    finally:
        os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
