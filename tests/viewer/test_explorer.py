"""The zoom explorer (``zoomldm view IMAGE --generate``): DZI layout, generated tiles, cache, concurrency,
order independence, the consistency record, the embedded model, and the command line.

The compat model (64² patches) runs with a two-step schedule and ``window_patches=1`` (a block is one 64²
parent window → a 128² generation, footprint 64², ring 32 px), tiles of 64 px. The tests of the cache and the
worker run with ``blend=0`` (``KEEP``: each tile is one block's centre, so a tile two levels past a 64² image
needs two blocks); the blending itself is tested with stand-in generators and, for order independence, with
the model.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _fixtures import one_thread, run_cli
from zoomldm import ZoomLDMPipeline
from zoomldm.errors import ZoomLDMError
from zoomldm.viewer.explorer import Explorer, block_seed, downsample2, feather, psnr, seam_statistics
from zoomldm.viewer.server import serve

FAST = dict(t0=50, stride=50, inner_steps=1, inversion_steps=1, no_postprocess=True)
GEOMETRY = dict(window_patches=1, tile_size=64)
KEEP = dict(GEOMETRY, blend=0)  # no blending: a tile is one block's centre (cache and worker mechanics)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def pipe(small_checkpoint, small_config) -> ZoomLDMPipeline:
    return ZoomLDMPipeline.from_official(small_checkpoint, config=small_config)


@pytest.fixture(scope="module")
def image64(data_dir) -> np.ndarray:
    """The H&E image box-filtered to 64² (a "5x thumbnail")."""
    with Image.open(data_dir / "brca_001.jpeg") as image:
        return np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BOX))


def _get(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, b"", dict(err.headers)


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _serve(pipe, image, cache, **kw):
    options = dict(KEEP, **FAST)
    options.update(kw)
    return serve(image, port=0, generate=True, source="5x", pipe=pipe, cache=cache, **options)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the grey levels of two images (structure, whatever the colour offset)."""
    a, b = a.astype(float).mean(-1), b.astype(float).mean(-1)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_dzi_layout_image_tiles_and_404s(pipe, image64, tmp_path):
    with _serve(pipe, image64, tmp_path / "cache") as server:
        explorer = server.explorer
        status, dzi, _ = _get(server.url + "image.dzi")
        root = ET.fromstring(dzi)
        size = root.find("{*}Size")
        assert status == 200 and root.get("Format") == "png" and root.get("TileSize") == "64"
        assert root.get("Overlap") == "0" and (size.get("Width"), size.get("Height")) == ("256", "256")
        # DZI levels: 0 (1 px) … 8 (256 px, 20x); the image's own pixels are level 6 (5x)
        assert explorer.max_level == 8 and explorer.geometry.image_level == 6
        assert server.info["dzi_levels"] == {"5x": 6, "10x": 7, "20x": 8}

        status, tile, headers = _get(server.url + "image_files/6/0_0.png")
        assert status == 200 and headers["Content-Type"] == "image/png"
        np.testing.assert_array_equal(_png(tile), image64)  # the image's own pixels, lossless
        half = np.asarray(Image.fromarray(image64).resize((32, 32), Image.Resampling.BOX))
        np.testing.assert_array_equal(_png(_get(server.url + "image_files/5/0_0.png")[1]), half)
        assert _png(_get(server.url + "image_files/0/0_0.png")[1]).shape == (1, 1, 3)

        status, page, _ = _get(server.url)
        assert status == 200 and b"image.dzi" in page and b"progress.json" in page and b"tileRetryMax" in page
        assert json.loads(_get(server.url + "progress.json")[1])["pending"] == 0
        for bad in ("image_files/9/0_0.png", "image_files/8/4_0.png", "image_files/8/0_4.png",
                    "image_files/6/1_0.png", "image_files/8/0_0.jpeg", "image_files/x/0_0.png",
                    "image_files/8/-1_0.png", "image_files/8/0_0.png/x", "slide.dzi",
                    "slide_files/8/0_0.png", "image_files/99999/0_0.png", "nothing"):  # fmt: skip
            assert _get(server.url + bad)[0] == 404, bad
        assert explorer.generated == 0  # none of that needed the model
    assert not list((tmp_path / "cache").rglob("*.png"))


def test_generated_tile_is_cached_recorded_and_reused_after_restart(pipe, image64, tmp_path):
    cache = tmp_path / "cache"
    with _serve(pipe, image64, cache) as server:
        explorer = server.explorer
        status, tile, _ = _get(server.url + "image_files/8/0_0.png")  # 20x: two levels past the image
        assert status == 200 and _png(tile).shape == (64, 64, 3)
        assert explorer.generated == 2  # block (0, 0) at 20x and its parent block (0, 0) at 10x
        folder = explorer.cache_dir
        block20, block10 = folder / "20x" / "0_0.png", folder / "10x" / "0_0.png"
        assert block20.is_file() and block10.is_file() and folder.parent == cache
        generation = _png(block20.read_bytes())  # the whole generation: footprint + 32 px ring
        assert generation.shape == (128, 128, 3)
        np.testing.assert_array_equal(_png(tile), generation[32:96, 32:96])  # blend 0: the centre

        # the record: PSNR of the downsampled block against the parent pixels it was generated under
        record = json.loads((folder / "20x.json").read_text())
        parent = _png(block10.read_bytes())[32:64, 32:64]  # the 10x pixels served there
        np.testing.assert_array_equal(parent, explorer.region(1, 0, 0, 32, 32))
        expected = psnr(downsample2(generation[32:96, 32:96]), parent)
        assert record["blocks"]["0_0"]["psnr_db"] == pytest.approx(expected, abs=1e-3)
        assert record["level"] == "20x" and record["parent"] == "10x" and record["block"] == 64
        assert json.loads((folder / "10x.json").read_text())["blocks"].keys() == {"0_0"}
        progress = json.loads(_get(server.url + "progress.json")[1])
        assert progress["generated"] == 2 and progress["mean_block_s"] > 0 and progress["errors"] == []

    with _serve(pipe, image64, cache) as again:  # a restart: the cache is reused, nothing is computed
        assert again.explorer.cache_dir == folder
        assert _get(again.url + "image_files/8/0_0.png")[1] == tile and again.explorer.generated == 0

    other = Explorer(pipe, image64, "5x", cache=cache, seed=1, **KEEP, **FAST)  # another seed
    try:
        assert other.cache_dir != folder
        assert not np.array_equal(other.tile_array(8, 0, 0), _png(tile))
    finally:
        other.close()


def test_same_seed_same_tiles_whatever_the_zoom_order(pipe, image64, tmp_path):
    """With blending (the default) and the model: a 64 × 32 image → 10x: 2 × 1 blocks whose tiles blend
    both generations across their border at x = 64; visited in either order, the same bytes."""
    image = image64[:32]
    first = Explorer(pipe, image, "5x", "10x", cache=tmp_path / "a", **GEOMETRY, **FAST)
    second = Explorer(pipe, image, "5x", "10x", cache=tmp_path / "b", **GEOMETRY, **FAST)
    try:
        assert first.geometry.blend == 16  # ring 16 parent px: a 32 px wide overlap
        a0, a1 = first.tile_array(7, 0, 0), first.tile_array(7, 1, 0)
        b1, b0 = second.tile_array(7, 1, 0), second.tile_array(7, 0, 0)
        np.testing.assert_array_equal(a0, b0)
        np.testing.assert_array_equal(a1, b1)
        a, b = _files(first.cache_dir), _files(second.cache_dir)
        assert a.keys() == b.keys() == {"10x/0_0.png", "10x/1_0.png"}
        assert a == b  # byte-identical
        assert a["10x/0_0.png"] != a["10x/1_0.png"]
        # the tile is the blend of both blocks' generations across their border
        g0 = first.generation(1, 0, 0)
        assert g0.shape == (128, 128, 3)
        np.testing.assert_array_equal(a0[:, :48], g0[32:96, 32:80])  # the interior: block 0's centre
        assert not np.array_equal(a0[:, 48:64], g0[32:96, 80:96])  # the border zone: not block 0 alone
        record = json.loads((first.cache_dir / "10x.json").read_text())
        assert record["blend"] == 16 and record["seam"]["pairs"] == 1
    finally:
        first.close()
        second.close()


def test_deeper_levels_are_generated_from_the_blended_pixels_whatever_the_order(
    pipe, image64, tmp_path, monkeypatch
):
    """Two generated levels with a stand-in (per-block offsets, so blending matters): the parent window of a
    20x block is the served (blended) 10x pixels, and the cache is byte-identical whatever the order."""
    offsets, parents = _OffsetGenerator(), {}

    def generate(self, step, bx, by, parent):
        parents[(self.cache_root.name, step, bx, by)] = parent.copy()
        return offsets(self, step, bx, by, parent)

    monkeypatch.setattr(Explorer, "_generate", generate)
    first = Explorer(pipe, image64, "5x", cache=tmp_path / "a", **GEOMETRY, **FAST)
    second = Explorer(pipe, image64, "5x", cache=tmp_path / "b", **GEOMETRY, **FAST)
    try:
        first.tile_array(8, 1, 1)
        first.tile_array(7, 0, 0)
        second.tile_array(7, 0, 0)
        second.tile_array(8, 1, 1)
        a, b = _files(first.cache_dir), _files(second.cache_dir)
        assert a == b and len(a) == 4 + 9  # every 10x block; 20x blocks (0..2)² around (1, 1)
        # 20x block (1, 1): footprint 10x [32, 64)², ring 16 → window [16, 80)² of the served 10x level
        np.testing.assert_array_equal(parents[("a", 2, 1, 1)], first.region(1, 16, 16, 64, 64))
        assert not np.array_equal(parents[("a", 2, 1, 1)], first.generation(1, 0, 0)[48:112, 48:112])
    finally:
        first.close()
        second.close()


class _SlowGenerator:
    """A stand-in for super-resolution: ``seconds`` of work, nearest 2× upsampling, calls counted."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls, self.lock = seconds, 0, threading.Lock()

    def __call__(self, explorer: Explorer, step: int, bx: int, by: int, parent: np.ndarray) -> np.ndarray:
        with self.lock:
            self.calls += 1
        time.sleep(self.seconds)
        return np.repeat(np.repeat(parent, 2, axis=0), 2, axis=1)


def test_concurrent_requests_compute_once_and_other_tiles_keep_serving(pipe, image64, tmp_path, monkeypatch):
    slow = _SlowGenerator(0.8)
    monkeypatch.setattr(Explorer, "_generate", lambda self, *args: slow(self, *args))
    with _serve(pipe, image64, tmp_path / "cache") as server:
        results: list[tuple[int, bytes, dict]] = []
        url = server.url + "image_files/8/0_0.png"
        threads = [threading.Thread(target=lambda: results.append(_get(url))) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # the worker is on the first block now
        start = time.perf_counter()
        status, _, _ = _get(server.url + "image_files/6/0_0.png")  # an existing tile, meanwhile
        waited = time.perf_counter() - start
        progress = json.loads(_get(server.url + "progress.json")[1])
        for thread in threads:
            thread.join(timeout=60)
        assert status == 200 and waited < 0.5, waited  # not queued behind the model
        assert progress["running"] is not None and progress["pending"] >= 1
        assert len(results) == 8 and {r[0] for r in results} == {200} and len({r[1] for r in results}) == 1
        assert slow.calls == 2 and server.explorer.generated == 2  # one 20x block + its 10x parent, once
        # the stand-in upsamples its parent: the record says the block matches it exactly
        record = json.loads((server.explorer.cache_dir / "20x.json").read_text())
        assert record["blocks"]["0_0"]["psnr_db"] == 100.0

        server.source.tile_wait = 0.1  # a tile whose blocks take longer than the wait: 503, then ready
        status, _, headers = _get(server.url + "image_files/8/3_3.png")
        assert status == 503 and headers["Retry-After"] == "1"
        deadline = time.monotonic() + 30
        while json.loads(_get(server.url + "progress.json")[1])["pending"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _get(server.url + "image_files/8/3_3.png")[0] == 200
        assert slow.calls == 4  # block (3, 3) at 20x and its parent (1, 1) at 10x


def test_a_failing_block_is_an_error_response_not_a_crash(pipe, image64, tmp_path, monkeypatch):
    def broken(explorer, step, bx, by, parent):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Explorer, "_generate", broken)
    with _serve(pipe, image64, tmp_path / "cache") as server:
        assert _get(server.url + "image_files/7/0_0.png")[0] == 500
        assert _get(server.url + "image_files/6/0_0.png")[0] == 200  # still serving
        errors = json.loads(_get(server.url + "progress.json")[1])["errors"]
        assert errors and "10x 0_0" in errors[-1] and "out of memory" in errors[-1]


class _OffsetGenerator:
    """A stand-in whose blocks disagree the way independent samples do: bilinear 2× upsampling of the parent
    plus a constant colour offset per block (from its seed) and a little per-block noise."""

    def __call__(self, explorer: Explorer, step: int, bx: int, by: int, parent: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(block_seed(explorer.seed, step, bx, by))
        size = (2 * parent.shape[1], 2 * parent.shape[0])
        up = np.asarray(Image.fromarray(parent).resize(size, Image.Resampling.BILINEAR)).astype(float)
        up += rng.uniform(-30, 30) + rng.normal(0, 3, up.shape)
        return np.clip(np.rint(up), 0, 255).astype(np.uint8)


def test_blending_is_a_partition_of_unity_and_leaves_block_interiors_alone(
    pipe, image64, tmp_path, monkeypatch
):
    """Constant blocks (block (bx, by) is the grey 20 + 60·bx + 10·by): a pixel is a weighted mean of its
    blocks' generations with weights adding up to 1; the interior of a block is exactly its own; across a
    border a raised-cosine ramp over 2·blend px centred on it; a corner mixes 4 blocks; no ramp at the
    canvas edges."""
    monkeypatch.setattr(
        Explorer,
        "_generate",
        lambda self, step, bx, by, parent: np.full((128, 128, 3), 20 + 60 * bx + 10 * by, np.uint8),
    )
    explorer = Explorer(pipe, image64, "5x", "10x", cache=tmp_path, **GEOMETRY, **FAST)
    try:
        served = explorer.region(1, 0, 0, 128, 128)[..., 0].astype(float)
        assert explorer.generated == 4
        xs = np.arange(128)
        wx = [feather(xs, i, 2, 64, 16) for i in (0, 1)]
        np.testing.assert_allclose(wx[0] + wx[1], 1.0, atol=1e-12)  # partition of unity
        expected = sum(np.outer(wx[by], wx[bx]) * (20 + 60 * bx + 10 * by) for bx in (0, 1) for by in (0, 1))
        np.testing.assert_array_equal(served, np.rint(expected))
        assert (served[:48, :48] == 20).all() and (served[80:, 80:] == 90).all()  # interiors: own pixels
        assert (served[:48, 80:] == 80).all() and (served[0, :48] == 20).all()  # and no ramp at the edges
        ramp = served[0, 40:88]
        assert (np.diff(ramp) >= 0).all() and served[0, 52] > 20 and served[0, 75] < 80  # 48 … 80
        assert served[0, 63] + served[0, 64] == pytest.approx(100, abs=1)  # symmetric about the border
        assert served[63, 63] == pytest.approx((20 + 80 + 30 + 90) / 4, abs=4)  # the corner: 4 blocks
        np.testing.assert_array_equal(explorer.block(1, 1, 1)[..., 0], served[64:, 64:])
    finally:
        explorer.close()


def test_blending_removes_block_offsets_and_the_record_measures_seams(pipe, image64, tmp_path, monkeypatch):
    """Blocks that disagree by a colour offset: without blending the borders are steps (seam/interior ratio
    far above 1); blended, the ratio is near 1. The level record's statistic, accumulated block by block as
    blocks become final, equals :func:`seam_statistics` of the whole served level."""
    offsets = _OffsetGenerator()
    monkeypatch.setattr(Explorer, "_generate", lambda self, *args: offsets(self, *args))
    ratios = {}
    for blend in (0, 16):
        explorer = Explorer(
            pipe, image64, "5x", "10x", cache=tmp_path / str(blend), blend=blend, **GEOMETRY, **FAST
        )
        try:
            explorer.tile_array(7, 1, 1)  # needs every 10x block when blending, else one
            explorer.tile_array(7, 0, 0)
            for bx, by in ((0, 1), (1, 0)):
                explorer.block(1, bx, by)
            level = explorer.region(1, 0, 0, 128, 128)
            whole = seam_statistics(level, 64)
            seam = explorer.level_record(1)["seam"]
            assert seam["pairs"] == 4
            for name in ("interior_mae", "seam_mae", "seam_ratio"):
                assert seam[name] == pytest.approx(whole[name], abs=2e-3), (blend, seam, whole)
            left, right = level[:, 63].astype(float), level[:, 64].astype(float)
            top, bottom = level[63].astype(float), level[64].astype(float)
            expected = (np.abs(left - right).sum() + np.abs(top - bottom).sum()) / (2 * 128 * 3)
            assert seam["seam_mae"] == pytest.approx(expected, abs=1e-3)
            ratios[blend] = seam["seam_ratio"]
        finally:
            explorer.close()
    assert ratios[0] > 2.0 and ratios[16] < 1.3, ratios


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(source="20x"), "must be finer"),
        (dict(source="5x", target="10x", cache=None), "cache= is required"),
        (dict(source="3x"), "'3x' is a satellite magnification, not a level of this pathology model"),
        (dict(source="5x", t0="a"), "invalid setting"),
        (dict(source="5x", bogus=1), "unknown setting bogus"),
        (dict(source="5x", window_patches=0), "window_patches"),
        (dict(source="5x", window_patches=1, blend=33), "blend must be"),
    ],
)
def test_bad_explorer_arguments(pipe, image64, tmp_path, kwargs, message):
    kwargs.setdefault("cache", tmp_path)
    with pytest.raises(ZoomLDMError, match=message):
        Explorer(pipe, image64, **kwargs)


@pytest.mark.slow
def test_embedded_model_generates_tissue_consistent_with_the_parent(data_dir, tmp_path, monkeypatch):
    """The numeric consistency claim, with the trained embedded model (its VQ decodes what it encodes); no
    checkpoint named and the published one not available: the package's default rule falls back to the
    embedded model and says so in one line. ``blend=0``: the tile is block (0, 0)'s centre alone."""
    import zoomldm.checkpoints.default as embedded  # the module of the default rule

    monkeypatch.delenv("ZOOMLDM_CHECKPOINT", raising=False)
    monkeypatch.setattr(embedded, "published_available", lambda *a, **k: False)
    with Image.open(data_dir / "brca_001.jpeg") as image:
        he = np.asarray(image.convert("RGB").resize((1024, 1024), Image.Resampling.BOX))[256:512, 256:512]
    settings = dict(t0=300, stride=100, inner_steps=3, inversion_steps=2, no_postprocess=True)  # 3 steps
    with serve(he, port=0, generate=True, source="5x", to="10x", cache=tmp_path, window_patches=1, blend=0,
               tile_wait=600, **settings) as server:  # fmt: skip
        note = server.explorer.note
        assert "using the embedded offline model" in note and "\n" not in note, note
        status, tile, _ = _get(server.url + f"image_files/{server.explorer.max_level}/0_0.png")
        record = json.loads((server.explorer.cache_dir / "10x.json").read_text())
    generated = _png(tile)
    assert status == 200 and generated.shape == (256, 256, 3)
    small = downsample2(generated)
    # the block (0, 0) covers the image's [0, 128)²; the same block against a shifted parent region is the
    # baseline (same colours, other structure)
    parent, other = he[:128, :128], he[64:192, 64:192]
    matched, shifted = psnr(small, parent), psnr(small, other)
    assert record["blocks"]["0_0"]["psnr_db"] == pytest.approx(matched, abs=1e-3)
    assert matched > 21.0 and matched > shifted + 3.0, (matched, shifted)  # measured 23.2 vs 17.9 dB
    assert _correlation(small, parent) > 0.5 and _correlation(small, other) < 0.2  # measured 0.69, -0.08
    pink = (generated[..., 0].astype(int) - generated[..., 1] > 30).mean()
    assert pink > 0.5  # H&E hues: tissue, not noise


def test_cli_generate_says_it_uses_the_embedded_model(tmp_path, image64):
    """No --checkpoint, no $ZOOMLDM_CHECKPOINT, no hub (HF_HUB_OFFLINE, an empty hub cache): the package's
    default rule picks the embedded model, and its one line goes to stderr."""
    path = tmp_path / "thumb.png"
    Image.fromarray(image64).save(path)
    exe = Path(sys.executable).with_name("zoomldm")
    command = [str(exe), "view", str(path), "--generate", "--from", "5x", "--port", "0", "--no-browser",
               "--device", "cpu"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "ZOOMLDM_CHECKPOINT"}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        assert lines[0].startswith("thumb.png: 64x64 px at 5x, generated on zoom to 20x (256x256 px)"), lines
        assert str(tmp_path / "thumb.png.explore") in lines[0]
        url = lines[1].split()[1]
        status, dzi, _ = _get(url + "image.dzi")
        assert status == 200 and b'Width="256"' in dzi
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    notes = [line for line in err.splitlines() if "embedded offline model" in line]
    assert len(notes) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--generate"], "--from"),
        (["--from", "5x"], "only with --generate"),
        (["--generate", "--from", "5x", "--to", "2.5x"], "must be finer"),
        (["--generate", "--from", "7x"], "--from"),
        (["--generate", "--from", "5x", "--schedule", "bogus"], "unknown schedule"),
    ],
)
def test_cli_bad_generate_options(tmp_path, image64, capsys, args, message):
    path = tmp_path / "thumb.png"
    Image.fromarray(image64).save(path)
    code, _, err = run_cli(
        ["view", str(path), "--no-browser", "--port", "0", "--device", "cpu", *args], capsys
    )
    assert code == 2 and message in err and "Traceback" not in err, err


def test_cli_generate_missing_image(tmp_path, capsys):
    code, _, err = run_cli(["view", str(tmp_path / "nope.png"), "--generate", "--from", "5x"], capsys)
    assert code == 2 and "no such file" in err
