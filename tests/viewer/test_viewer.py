"""The deep-zoom viewer: HTTP routes, the ``zoomldm view`` command, and the page in headless Chromium."""

from __future__ import annotations

import io
import subprocess
import sys
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _fixtures import chromium
from zoomldm.io import save_png, write_tiff
from zoomldm.viewer.server import STATIC_DIR, serve


@pytest.fixture(scope="module")
def he_2048(data_dir) -> np.ndarray:
    """The real 4096² H&E image downscaled to 2048² (box filter) for speed."""
    with Image.open(data_dir / "brca_001.jpeg") as image:
        return np.asarray(image.convert("RGB").resize((2048, 2048), Image.Resampling.BOX))


@pytest.fixture(scope="module")
def he_tiff(tmp_path_factory, he_2048) -> Path:
    return write_tiff(tmp_path_factory.mktemp("viewer") / "he.tif", he_2048, mpp=0.5, metadata={"seed": 1})


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, b"", ""


def test_vendored_openseadragon_is_complete():
    names = {p.name for p in STATIC_DIR.iterdir()}
    assert {"openseadragon.min.js", "OPENSEADRAGON_LICENSE.txt", "README.md"} <= names
    assert {
        f"{b}_{s}.png" for b in ("zoomin", "zoomout", "home", "fullpage") for s in ("rest", "hover")
    } <= names
    assert (STATIC_DIR / "openseadragon.min.js").read_text()[:40].startswith("//! openseadragon 6.1.1")
    assert "BSD" in (STATIC_DIR / "README.md").read_text()


def test_routes_serve_the_pyramid(he_tiff, he_2048):
    with serve(he_tiff, port=0) as server:
        assert server.url.startswith("http://127.0.0.1:")
        status, page, ctype = _get(server.url)
        assert status == 200 and ctype.startswith("text/html")
        assert b"static/openseadragon.min.js" in page and b"slide.dzi" in page and b"0.5 \xc2\xb5m/px" in page
        assert b"cdn" not in page.lower() and b"https://" not in page

        status, dzi, _ = _get(server.url + "slide.dzi")
        image = ET.fromstring(dzi)
        size = image.find("{*}Size")
        assert status == 200 and image.get("Format") == "jpeg" and image.get("TileSize") == "254"
        assert (size.get("Width"), size.get("Height")) == ("2048", "2048")

        top = server.deepzoom.level_count - 1  # full resolution
        status, tile, ctype = _get(server.url + f"slide_files/{top}/1_2.jpeg")
        assert status == 200 and ctype == "image/jpeg"
        got = np.asarray(Image.open(io.BytesIO(tile)).convert("RGB")).astype(float)
        # tile (col 1, row 2) with overlap 1 starts at x = 254 - 1, y = 508 - 1 and spans 256 px
        err = np.abs(got - he_2048[507:763, 253:509]).mean()
        shifted = np.abs(got - he_2048[508:764, 254:510]).mean()
        # two JPEG round trips (file q90, tile q85) on textured tissue: measured 5.4 vs 14.5 one pixel off
        assert got.shape == (256, 256, 3) and err < 7.0 and err < 0.6 * shifted

        status, info, _ = _get(server.url + "info.json")
        assert status == 200 and b'"mpp": 0.5' in info and b'"seed": 1' in info
        for bad in (f"slide_files/{top + 1}/0_0.jpeg", f"slide_files/{top}/99_0.jpeg", "static/../viewer.py",
                    "static/%2e%2e/viewer.py", "etc/passwd", "slide_files/0/0_0.png"):  # fmt: skip
            assert _get(server.url + bad)[0] == 404, bad
        assert _get(server.url + "static/openseadragon.min.js")[0] == 200


def test_png_input(tmp_path, he_2048):
    path = save_png(tmp_path / "small.png", he_2048[:300, :500], {"seed": 2})
    with serve(path, port=0) as server:
        assert (server.info["width"], server.info["height"]) == (500, 300)
        status, tile, _ = _get(server.url + f"slide_files/{server.deepzoom.level_count - 1}/0_0.jpeg")
        assert status == 200 and Image.open(io.BytesIO(tile)).size == (255, 255)


def test_cli_view_serves_until_stopped(he_tiff, tmp_path):
    exe = Path(sys.executable).with_name("zoomldm")
    process = subprocess.Popen(
        [str(exe), "view", str(he_tiff), "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        assert lines[0].startswith("he.tif: 2048x2048 px, 4 levels")
        url = lines[1].split()[1]
        assert url.startswith("http://127.0.0.1:") and _get(url + "slide.dzi")[0] == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    missing = subprocess.run([str(exe), "view", str(tmp_path / "nope.tif")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr


def test_page_loads_zooms_and_shows_the_image_in_headless_chromium(he_tiff, he_2048, tmp_path):
    browser = chromium()
    shot = tmp_path / "shot.png"
    with serve(he_tiff, port=0) as server:
        command = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=800,600", "--virtual-time-budget=5000",
            f"--screenshot={shot}", server.url + "?zoom=4",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
        requested = list(server.requested)
        top = server.deepzoom.level_count - 1
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]

    # the page loaded the vendored script and the pyramid, then zoomed: tiles of several levels, down to
    # the full-resolution level (zoom 4 on an 800 px wide view of a 2048 px image needs 1:1 pixels)
    assert "/" in requested and "/static/openseadragon.min.js" in requested and "/slide.dzi" in requested
    levels = Counter(int(p.split("/")[2]) for p in requested if p.startswith("/slide_files/"))
    assert len(levels) >= 3 and max(levels) == top, levels

    # the screenshot shows the tissue: textured, and with the image's colours
    pixels = np.asarray(Image.open(shot).convert("RGB"))[:-30].reshape(-1, 3).astype(float)  # minus caption
    assert pixels.std(axis=0).mean() > 20  # measured 47; a blank or grey page is ~0
    mean_rgb, image_rgb = pixels.mean(axis=0), he_2048.reshape(-1, 3).mean(axis=0)
    assert np.abs(mean_rgb - image_rgb).max() < 25, (mean_rgb, image_rgb)  # measured ≤ 10 per channel
    pink = (pixels[:, 0] > pixels[:, 1] + 30) & (pixels[:, 2] > pixels[:, 1] + 30)  # eosin/haematoxylin hues
    assert pink.mean() > 0.5
