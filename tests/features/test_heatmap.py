"""Attention heatmaps: placement at tile coordinates, colours, thumbnail overlay, PNG provenance."""

from __future__ import annotations

import numpy as np
from PIL import Image

from zoomldm.features.heatmap import attention_heatmap, colormap, find_thumbnail, percentiles, save_heatmap


def test_tiles_land_at_their_coordinates_with_percentile_colours():
    coords = np.array([[0, 0], [512, 0], [0, 256], [1024, 512]])  # level 0, 256-px tiles
    scores = np.array([0.1, 0.7, 0.05, 0.15])
    image = np.asarray(attention_heatmap(coords, scores, 256, max_side=1024, max_tile_px=32))
    assert image.shape == (3 * 32, 5 * 32, 3)  # extent 1280 x 768 at 1/8
    expected = colormap(percentiles(scores))  # ranks 1, 3, 0, 2 of 3
    for (x, y), colour in zip(coords // 8, expected, strict=True):
        assert (image[y + 16, x + 16] == colour).all()
    assert (image[16, 48] == 255).all()  # no tile at (256, 0): background stays white
    assert (expected[1] == colormap(np.array(1.0))).all() and tuple(expected[1]) == (253, 231, 37)


def test_large_slides_are_downscaled_and_thumbnails_blended(tmp_path, data_dir):
    coords = np.stack(np.meshgrid(np.arange(40) * 256, np.arange(20) * 256), -1).reshape(-1, 2)
    scores = np.linspace(0, 1, len(coords))
    thumb = Image.open(data_dir / "brca_001.jpeg")
    plain = attention_heatmap(coords, scores, 256, max_side=500)
    over = attention_heatmap(coords, scores, 256, max_side=500, thumbnail=thumb, alpha=0.5)
    assert plain.size == over.size == (500, 250)
    base = np.asarray(thumb.convert("RGB").resize(plain.size, Image.Resampling.LANCZOS)).astype(float)
    blended = 0.5 * base + 0.5 * np.asarray(plain).astype(float)
    assert np.abs(np.asarray(over).astype(float) - blended).max() <= 1.0
    path = save_heatmap(over, tmp_path / "h" / "s.png", {"slide_id": "s", "fold": 3})
    assert Image.open(path).text == {"slide_id": "s", "fold": "3"}


def test_canvas_covers_the_slide_extent_and_thumbnails_are_found_by_slide_id(tmp_path):
    coords = np.array([[0, 0], [256, 256]])
    image = attention_heatmap(coords, np.array([1.0, 2.0]), 256, extent=(2048, 1024))
    assert image.size == (256, 128)  # 1/8 of the slide (32 px per tile), not just the tiles' bounding box
    assert (np.asarray(image)[100, 200] == 255).all()
    Image.new("RGB", (64, 32), (200, 10, 10)).save(tmp_path / "s1.jpg")
    assert find_thumbnail(tmp_path, "s1").size == (64, 32)
    assert find_thumbnail(tmp_path, "s2") is None and find_thumbnail(None, "s1") is None
