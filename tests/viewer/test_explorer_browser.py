"""The zoom explorer in headless Chromium (Debian ``chromium``) with the compat model: open the page zoomed two
levels past the image, let it generate, screenshot, and check that the screenshot shows the generated 20x
pixels (not the 5x image scaled up) and that the cache holds the blocks. ``blend=0`` (each tile one block's
centre) keeps the number of blocks of the view at 8: what the browser shows is the subject here, the
blending of neighbouring blocks is tested on the served pixels in ``test_explorer.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _fixtures import chromium, one_thread
from zoomldm import ZoomLDMPipeline
from zoomldm.viewer.server import serve

FAST = dict(t0=50, stride=50, inner_steps=1, inversion_steps=1, no_postprocess=True)
WIDTH, HEIGHT, CAPTION = 400, 300, 22  # window; the caption bar at the bottom is not part of the viewer


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    with one_thread():
        yield


def _cells(image: np.ndarray, n: int) -> np.ndarray:
    """Mean colour of an ``n × n`` grid of cells (robust to sub-pixel placement and interpolation)."""
    h, w = image.shape[:2]
    ys, xs = np.linspace(0, h, n + 1).astype(int), np.linspace(0, w, n + 1).astype(int)
    return np.array(
        [
            [image[ys[i] : ys[i + 1], xs[j] : xs[j + 1]].reshape(-1, 3).mean(0) for j in range(n)]
            for i in range(n)
        ]
    )


def test_zooming_past_the_image_shows_generated_tiles(small_checkpoint, small_config, data_dir, tmp_path):
    browser = chromium()
    pipe = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config)
    with Image.open(data_dir / "brca_001.jpeg") as image:
        image64 = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BOX))
    shot = tmp_path / "shot.png"
    zoom = 2  # the view is half the image wide: 128 px of the 256² 20x canvas over 400 screen px
    with serve(image64, port=0, generate=True, source="5x", pipe=pipe, cache=tmp_path / "cache",
               window_patches=1, tile_size=64, blend=0, tile_wait=0.5, **FAST) as server:  # fmt: skip
        explorer = server.explorer

        def chromium_page(path: Path, budget_ms: int, seconds: float) -> int | None:
            """Load the page, screenshot it into ``path``; the exit status, or None when it was stopped
            after ``seconds`` (its own process group, so its helper processes stop with it)."""
            command = [
                browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WIDTH},{HEIGHT}",
                f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", server.url + f"?zoom={zoom}",
            ]  # fmt: skip
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
            try:
                return process.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
                return None

        # 1. the page asks for the tiles of the view; a tile waits 0.5 s for its blocks, then answers 503
        # and the page asks again while it shows the coarser levels and the progress line. The browser's
        # virtual time stands still while requests are pending, so this visit is stopped after 30 s.
        chromium_page(tmp_path / "first.png", 3000, 30)
        assert any(p.startswith("/image_files/8/") for p in server.requested)  # 20x: two levels past
        deadline = time.monotonic() + 300
        while (
            explorer.progress()["pending"] or explorer.progress()["running"]
        ) and time.monotonic() < deadline:
            time.sleep(0.2)
        requested = list(server.requested)
        # 2. the same view again, now from the cache (a tile the first visit did not reach is waited for)
        server.source.tile_wait = 120
        status = chromium_page(shot, 5000, 240)
        blocks20 = sorted(p.name for p in (explorer.cache_dir / "20x").glob("*.png"))
        blocks10 = sorted(p.name for p in (explorer.cache_dir / "10x").glob("*.png"))
        # the 20x pixels under the centre of the view, from the cache (the view spans canvas x, y ∈ [64, 192))
        scale = WIDTH * zoom / 256  # screen px per 20x px
        half_w, half_h = 80 / scale, 60 / scale  # the central 160 × 120 screen px
        box = (round(128 - half_w), round(128 - half_h), round(2 * half_w), round(2 * half_h))
        generated = explorer.region(2, *box)
        generated_count = explorer.generated
    assert status == 0 and shot.is_file()

    # the first page load asked for tiles two levels past the image (DZI level 8 = 20x): they were generated
    assert "/image.dzi" in requested and any(p.startswith("/image_files/8/") for p in requested)
    assert blocks20 and blocks10 and generated_count == len(blocks20) + len(blocks10)
    assert {"1_1.png", "2_2.png"} <= set(blocks20)  # the blocks under the centre of the view

    # the screenshot's centre is the generated 20x pixels: compare 6 × 6 cell colours with them and with
    # the 5x image scaled up to the same place (what the page would show without generation)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    cy, cx = (HEIGHT - CAPTION) // 2, WIDTH // 2
    centre = pixels[cy - 60 : cy + 60, cx - 80 : cx + 80]
    upscaled = np.asarray(Image.fromarray(image64).resize((256, 256), Image.Resampling.BICUBIC))
    x, y, w, h = box
    shown = _cells(centre, 6)
    to_generated = np.abs(shown - _cells(generated.astype(float), 6)).mean()
    to_image = np.abs(shown - _cells(upscaled[y : y + h, x : x + w].astype(float), 6)).mean()
    # measured 11.9 vs 57.1 (0-255): the browser's resampling of the noisy compat tiles explains the first
    assert to_generated < 20 and to_generated < 0.35 * to_image, (to_generated, to_image)


def test_while_generating_the_page_shows_the_coarser_level_and_the_progress_line(
    small_checkpoint, small_config, data_dir, tmp_path, monkeypatch
):
    """A block that takes long (a stand-in that waits; the tiles answer 503 at once, so the browser's virtual
    time runs): the view shows the 5x image scaled up — the placeholder — and the progress line, a dark box
    at the bottom left."""
    from zoomldm.viewer.explorer import Explorer

    browser = chromium()
    release = threading.Event()

    def waiting(self, step, bx, by, parent):
        release.wait(120)
        return np.repeat(np.repeat(parent, 2, axis=0), 2, axis=1)

    monkeypatch.setattr(Explorer, "_generate", waiting)
    pipe = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config)
    with Image.open(data_dir / "brca_001.jpeg") as image:
        image64 = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BOX))
    shot = tmp_path / "placeholder.png"
    with serve(image64, port=0, generate=True, source="5x", pipe=pipe, cache=tmp_path / "cache",
               window_patches=1, tile_size=64, tile_wait=0) as server:  # fmt: skip
        command = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=5000",
            f"--screenshot={shot}", server.url + "?zoom=2",
        ]  # fmt: skip
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            status = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            status = None
        progress = server.explorer.progress()
        release.set()
    assert status == 0 and shot.is_file()
    assert progress["running"] is not None and progress["generated"] == 0  # still on the first block

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    # the centre of the view: the 5x image scaled up (H&E pink), not blank
    cy, cx = (HEIGHT - CAPTION) // 2, WIDTH // 2
    centre = pixels[cy - 40 : cy + 40, cx - 40 : cx + 40].reshape(-1, 3)
    upscaled = np.asarray(Image.fromarray(image64).resize((256, 256), Image.Resampling.BICUBIC))
    expected = upscaled[128 - 13 : 128 + 13, 128 - 13 : 128 + 13].reshape(-1, 3).mean(0)
    assert np.abs(centre.mean(0) - expected).max() < 25, (centre.mean(0), expected)
    # the progress line: a dark box with light text just above the caption, at the left
    box = pixels[HEIGHT - CAPTION - 30 : HEIGHT - CAPTION - 10, 10:200].reshape(-1, 3)
    assert (box.mean(1) < 40).mean() > 0.4 and (box.mean(1) > 150).mean() > 0.02
