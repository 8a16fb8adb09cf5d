"""Gigapixel engine end to end: a run killed mid-step resumes from its last finished block and gives the
same image bit for bit; two processes (gloo) give the image of one; large results keep no latent in memory.

The runs are the small request of ``_gigapixel_worker.request`` (4 tiles in 1×1 blocks, 2 outer steps, the
compat model), in subprocesses where a process must die or several must run.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoomldm.sampling import canvas as canvas_module
from zoomldm.sampling import output as output_module
from zoomldm.sampling.joint import generate_large_image

WORKER = Path(__file__).with_name("_gigapixel_worker.py")
_spec = importlib.util.spec_from_file_location("_gigapixel_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

BLOCKS = 4  # 2×2 tiles in 1×1 blocks


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, ZOOMLDM_PROGRESS="0", OMP_NUM_THREADS="1", **extra)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def uninterrupted(compat_pipe, tmp_path_factory):
    grid, kwargs = worker.request()
    out = tmp_path_factory.mktemp("whole") / "whole.png"
    result = generate_large_image(compat_pipe, grid, out=out, **kwargs)
    assert result.metrics["blocks"] == BLOCKS
    return result


def test_a_run_killed_mid_step_resumes_from_its_last_finished_block(compat_pipe, uninterrupted, tmp_path):
    out = tmp_path / "killed.png"
    done_dir = tmp_path / ".killed.png.resume" / "joint.zarr" / "done" / "00001"  # the second (last) step
    child = subprocess.Popen(
        [sys.executable, str(WORKER), str(out), "--slow", "0.3"], env=_env(), stderr=subprocess.PIPE
    )
    finished: set[str] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            finished = set(os.listdir(done_dir)) if done_dir.is_dir() else set()
            if 1 <= len(finished) <= BLOCKS - 2:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        _, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
    finished = set(os.listdir(done_dir))  # what the killed run had recorded
    assert 1 <= len(finished) < BLOCKS and not out.exists()

    computed: list[tuple[int, int]] = []
    mark = canvas_module.TileCanvas.mark_done

    def counting(self, step: int, block: int) -> None:
        computed.append((step, block))
        mark(self, step, block)

    grid, kwargs = worker.request()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(canvas_module.TileCanvas, "mark_done", counting)
        resumed = generate_large_image(compat_pipe, grid, out=out, **kwargs)
    # only the unfinished blocks of the interrupted step ran again, nothing of the step before
    assert sorted(computed) == sorted((1, b) for b in range(BLOCKS) if str(b) not in finished)
    np.testing.assert_array_equal(resumed.image, uninterrupted.image)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), uninterrupted.image)
    assert not out.with_name(".killed.png.resume").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_image_of_one(uninterrupted, tmp_path):
    out = tmp_path / "ranks.png"
    port = str(_free_port())
    ranks = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(out)],
            env=_env(RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
            stderr=subprocess.PIPE,
        )
        for r in range(2)
    ]
    errors = [p.communicate(timeout=300)[1].decode() for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], "\n".join(e[-2000:] for e in errors)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), uninterrupted.image)
    # each rank sampled half of the blocks of each of the 2 steps; the work counters are summed over ranks
    reports = [e.strip().splitlines()[-1].split() for e in errors]
    assert [int(r[1]) for r in reports] == [BLOCKS, BLOCKS]
    assert [int(r[3]) for r in reports] == [uninterrupted.metrics["unet_forwards"]] * 2
    assert not out.with_name(".ranks.png.resume").exists()


def test_large_results_keep_no_latent_in_memory(compat_pipe, uninterrupted, tmp_path, monkeypatch):
    # above MAX_IN_MEMORY_PIXELS the image and the latent stay on disk: the TIFF, and the canvas until done
    monkeypatch.setattr(output_module, "MAX_IN_MEMORY_PIXELS", 64 * 64)
    monkeypatch.setattr("zoomldm.sampling.joint.MAX_IN_MEMORY_PIXELS", 64 * 64)
    grid, kwargs = worker.request()
    out = tmp_path / "large.tif"
    result = generate_large_image(compat_pipe, grid, out=out, compression="zlib", **kwargs)
    assert result.image is None and result.latent is None and result.path == out
    import tifffile

    np.testing.assert_array_equal(tifffile.imread(out, level=0), uninterrupted.image)


def _dense_postprocess(pipe, latent, grid, config, seed):
    """SPEC §4.5 on the whole canvas at once (the in-memory algorithm), with the per-tile keyed noise."""
    import torch

    from zoomldm.sampling.conditions import summarize, window_grids
    from zoomldm.sampling.guidance import guided_eps
    from zoomldm.sampling.noise import keyed_normal
    from zoomldm.sampling.postprocess import INTERPOLATIONS, window_counts, window_positions
    from zoomldm.sampling.strided import predict_x0, strided_steps, strided_update

    P, (C, H, W) = pipe.config.latent_size, latent.shape
    window, stride = config.resolved(P)
    positions = window_positions(H, W, window, stride)
    count = window_counts(H, W, positions, window)
    target = pipe.scales[0]
    contexts = summarize(
        pipe, window_grids(grid, positions, P, target, INTERPOLATIONS[config.interp]), target
    )

    def noise(stream, step):
        tiles = keyed_normal((C, P, P), seed, stream, range(H // P * (W // P)), step)
        return tiles.view(H // P, W // P, C, P, P).permute(2, 0, 3, 1, 4).reshape(C, H, W)

    steps = strided_steps(pipe.config.schedule, config.t0, config.stride)
    x = steps[0].alpha ** 0.5 * latent + (1 - steps[0].alpha) ** 0.5 * noise("post_init", 0)
    for step in steps:
        x0_sum = torch.zeros_like(x)
        for i in range(0, len(positions), config.window_batch):
            pos = positions[i : i + config.window_batch].tolist()
            xw = torch.stack([x[:, y : y + window, c : c + window] for y, c in pos])
            t = torch.tensor(float(step.t))
            eps = guided_eps(pipe.unet, xw, t, contexts[i : i + len(pos)], config.guidance_w + 1)
            for (y, c), v in zip(pos, predict_x0(xw, eps, step), strict=True):
                x0_sum[:, y : y + window, c : c + window] += v
        x0 = x0_sum / count
        eps = (x - step.alpha**0.5 * x0) / (1 - step.alpha) ** 0.5
        x = strided_update(x0, eps, noise("post_step", step.index), step, config.variance_preserving_update)
    return x


def test_out_of_core_postprocessing_is_the_dense_algorithm(compat_pipe, tmp_path, monkeypatch):
    import torch

    from zoomldm.sampling import postprocess as post_module
    from zoomldm.sampling.postprocess import PostprocessConfig, postprocess_canvas, postprocess_latent

    g = torch.Generator().manual_seed(8)
    latent, grid = torch.randn(3, 48, 32, generator=g), torch.randn(32, 3, 2, generator=g)  # 3×2 tiles
    # 2 steps; 7 windows per batch, so that batches span window rows; no context cache
    config = PostprocessConfig(t0=100, window_batch=7, context_cache_mib=0)
    with torch.no_grad():
        dense = _dense_postprocess(compat_pipe, latent, grid, config, seed=3)
    banded = postprocess_latent(compat_pipe, latent, grid, config=config, seed=3, progress=False)
    # the same sums in the same order; only the Summarizer's batches differ (window rows vs all at once)
    assert torch.allclose(banded, dense, atol=1e-4) and (banded - latent).abs().mean() > 1e-2

    # resumable by step: a run that fails in its second step continues there on a rerun with the same key
    calls = []
    step_fn = post_module._post_step

    def failing(*args, **kwargs):
        calls.append(args[1].index)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return step_fn(*args, **kwargs)

    kwargs = dict(config=config, seed=3, folder=tmp_path / "post.zarr", key="k", progress=False)
    monkeypatch.setattr(post_module, "_post_step", failing)
    with pytest.raises(RuntimeError, match="killed"):
        postprocess_canvas(compat_pipe, latent, grid, **kwargs)
    resumed = postprocess_canvas(compat_pipe, latent, grid, **kwargs)
    assert len(calls) == 3  # step 1, step 2 (failed), step 2 again: step 1 was not redone
    assert torch.equal(resumed.to_tensor(), banded)


def test_progress_shows_stage_step_blocks_and_eta(compat_pipe, monkeypatch, capsys):
    monkeypatch.setenv("ZOOMLDM_PROGRESS", "1")
    grid, kwargs = worker.request()
    generate_large_image(compat_pipe, grid, **dict(kwargs, progress=True))
    err = capsys.readouterr().err
    # the joint stage's bars: its step of 2 and the blocks of that step done / total, then elapsed and ETA
    line = next(line for line in err.splitlines() if "joint sampling: step 2/2, blocks" in line)
    assert f"{BLOCKS}/{BLOCKS}" in line and line.count("0:00:") == 2
    assert "joint sampling: steps" in err and "decode windows" in err


# -- the coarse canvas of a request past one guide patch (issue 24) ----------------------------------------
COARSE_BANDS = 2  # worker.coarse_request(): a 2 × 2 coarse canvas, one band per patch row


@pytest.fixture(scope="module")
def coarse_uninterrupted(compat_pipe, tmp_path_factory):
    grid, kwargs = worker.coarse_request()
    out = tmp_path_factory.mktemp("coarse") / "whole.png"
    result = generate_large_image(compat_pipe, grid, out=out, **kwargs)
    assert result.settings["coarse"]["rows"] == COARSE_BANDS and len(result.settings["cascade"]) == 2
    assert result.metrics["coarse"]["bands"] == 2 * COARSE_BANDS  # 2 steps
    return result


def test_a_coarse_stage_killed_mid_step_resumes_from_its_last_finished_band(
    compat_pipe, coarse_uninterrupted, tmp_path
):
    """Killed after the first band of the coarse canvas' last step: the rerun computes only the other band
    of that step (its window contexts are not recomputed), then the cascade, and the image is bitwise the
    uninterrupted one."""
    out = tmp_path / "killed.png"
    done_dir = tmp_path / ".killed.png.resume" / "coarse.zarr" / "done" / "00001"
    child = subprocess.Popen(
        [sys.executable, str(WORKER), str(out), "--coarse", "--slow", "0.5"],
        env=_env(),
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if done_dir.is_dir() and len(os.listdir(done_dir)) == 1:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        _, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err.decode()[-2000:]
    finished = set(os.listdir(done_dir))
    assert len(finished) == 1 and not out.exists(), finished

    from zoomldm.sampling import coarse_bands

    computed: list[tuple[int, int]] = []
    contexts: list[int] = []
    mark, row_contexts = canvas_module.TileCanvas.mark_done, coarse_bands._window_row_contexts

    def counting(self, step: int, block: int) -> None:
        if self.folder is not None and self.folder.name == "coarse.zarr":
            computed.append((step, block))
        mark(self, step, block)

    grid, kwargs = worker.coarse_request()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(canvas_module.TileCanvas, "mark_done", counting)
        mp.setattr(coarse_bands, "_window_row_contexts", lambda *a: contexts.append(a[3]) or row_contexts(*a))
        resumed = generate_large_image(compat_pipe, grid, out=out, **kwargs)
    assert computed == [(1, b) for b in range(COARSE_BANDS) if str(b) not in finished]
    assert contexts == []  # the window contexts were all written before the first step
    np.testing.assert_array_equal(resumed.image, coarse_uninterrupted.image)
    assert not out.with_name(".killed.png.resume").exists()


def test_two_processes_give_the_cascade_of_one(coarse_uninterrupted, tmp_path):
    """Two gloo processes: the coarse canvas' window rows and bands, then each stage's blocks, split over
    the ranks; the image is bitwise that of one process."""
    out = tmp_path / "ranks.png"
    port = str(_free_port())
    ranks = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(out), "--coarse"],
            env=_env(RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
            stderr=subprocess.PIPE,
        )
        for r in range(2)
    ]
    errors = [p.communicate(timeout=300)[1].decode() for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], "\n".join(e[-2000:] for e in errors)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), coarse_uninterrupted.image)
    # each rank sampled its own share: one coarse band of each of the 2 steps, and blocks of both stages
    # (stage 1: 1 block, stage 2: 2 blocks, 2 steps each: 6 in all)
    reports = [e.strip().splitlines()[-1].split() for e in errors]
    assert [int(r[5]) for r in reports] == [2, 2], reports
    assert sum(int(r[1]) for r in reports) == 6 and min(int(r[1]) for r in reports) >= 2, reports
    assert not out.with_name(".ranks.png.resume").exists()


def test_a_grid_file_is_read_by_box_and_gives_the_same_image(compat_pipe, coarse_uninterrupted, tmp_path):
    """The reference as a .npy file (what ``--reference grid.npy`` gives): the coarse canvas reads it by
    window row and the stages by block, and the image is bitwise the in-memory grid's."""
    from zoomldm.io import grids

    grid, kwargs = worker.coarse_request()
    path = tmp_path / "grid.npy"
    np.save(path, grid.numpy())
    boxes: list[int] = []
    read = grids.SSLGridFile.__getitem__

    def recording(self, key):
        box = read(self, key)
        boxes.append(box.numel())
        return box

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(grids, "SCAN_BYTES", 2**20)  # the validation and digest scans: bands of 1 MiB
        mp.setattr(grids.SSLGridFile, "__getitem__", recording)
        result = compat_pipe.generate_large(path, out=tmp_path / "file.png", **kwargs)
    np.testing.assert_array_equal(result.image, coarse_uninterrupted.image)
    assert (
        result.settings["reference"]["sha256_16"] == coarse_uninterrupted.settings["reference"]["sha256_16"]
    )
    # by box: the coarse canvas' 5 window rows once each (contexts computed before the first step: each row
    # of a 2-patch-wide canvas spans half the grid), stage 2's 2 blocks in each of 2 steps (1/16 of the grid
    # each), stage 1's single block of 4 × 4 tiles (the whole 256² stage) in each step, and the checks'
    # scans by 1 MiB bands
    n = grid.numel()
    assert boxes.count(n // 2) == 5 and boxes.count(n // 16) == 4 and boxes.count(n) == 2, sorted(boxes)
    assert len(boxes) == 5 + 4 + 2 + boxes.count(2**20 // 4), sorted(boxes)
