"""Schedule presets (``--schedule official|fast``, ``schedule=`` of the pipeline methods): data in
:data:`zoomldm.sampling.settings.SCHEDULES`, applied before the caller's own options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _fixtures import run_cli
from zoomldm.errors import ConfigError
from zoomldm.sampling.newton import JointSamplingConfig
from zoomldm.sampling.plan import plan_large
from zoomldm.sampling.settings import SCHEDULES, large_image_settings, schedule_options
from zoomldm.sampling.superres import SRConfig


def test_official_is_the_default_and_fast_does_less_work(compat_pipe):
    official = large_image_settings(compat_pipe)
    assert official.sampling == JointSamplingConfig()
    fast = large_image_settings(compat_pipe, schedule="fast").sampling
    assert fast.stride > official.sampling.stride and fast.inner_steps < official.sampling.inner_steps
    assert fast.t0 == 1000  # from pure noise, as the official schedule
    sr = large_image_settings(compat_pipe, sampling_cls=SRConfig, schedule="fast").sampling
    assert isinstance(sr, SRConfig) and sr.inner_steps == SCHEDULES["fast"]["inner_steps"]


def test_options_override_the_preset(compat_pipe):
    s = large_image_settings(compat_pipe, schedule="fast", inner_steps=4).sampling
    assert s.inner_steps == 4 and s.stride == SCHEDULES["fast"]["stride"]


def test_unknown_schedule_is_one_line(compat_pipe):
    with pytest.raises(ConfigError, match="unknown schedule 'slow'; the schedules are official, fast"):
        large_image_settings(compat_pipe, schedule="slow")
    with pytest.raises(ConfigError):
        schedule_options("slow")


def test_fast_cuts_unet_rows_and_vq_passes(tmp_path):
    official = plan_large("brca", size=4096, out=tmp_path / "a.tif", calibrate=False)
    fast = plan_large("brca", size=4096, out=tmp_path / "a.tif", schedule="fast", calibrate=False)
    (o,), (f,) = official.stages, fast.stages
    assert f.outer_steps < o.outer_steps and f.inner_steps < o.inner_steps
    assert f.unet_rows < o.unet_rows / 3 and f.vq_passes < o.vq_passes / 3


def test_pipeline_generate_large_takes_the_preset(compat_pipe):
    grid = torch.from_numpy(np.random.default_rng(0).standard_normal((32, 2, 2))).float()
    short = dict(guide="10x", schedule="fast", t0=2 * SCHEDULES["fast"]["stride"], no_postprocess=True)
    result = compat_pipe.generate_large(reference=grid, progress=False, **short)
    joint = result.settings["joint"]
    assert (joint["stride"], joint["inner_steps"]) == (
        SCHEDULES["fast"]["stride"],
        SCHEDULES["fast"]["inner_steps"],
    )
    plan = plan_large(compat_pipe, calibrate=False, **short)
    assert plan.stages[0].unet_rows == result.metrics["unet_forwards"]


def test_cli_schedule_reaches_the_settings(small_checkpoint, small_config, tmp_path, capsys):
    args = ["--checkpoint", str(small_checkpoint), "--config", str(small_config), "--guide", "10x"]
    code, stdout, err = run_cli(
        ["generate", *args, "--schedule", "fast", "--inner-steps", "1", "--dry-run"], capsys
    )
    assert code == 0, err
    steps = len(range(0, 1000, SCHEDULES["fast"]["stride"]))
    assert "schedule fast" in stdout and f"{steps} steps × 1 Newton iterations" in stdout


def test_decode_stride_option(compat_pipe, tmp_path):
    """``decode_stride`` (CLI ``--decode-stride``): None keeps the official quarter window; a larger stride
    decodes fewer, still overlapping windows; one past the window is one ConfigError line."""
    window = large_image_settings(compat_pipe).decode.window  # one latent tile (16 for the compat model)
    assert large_image_settings(compat_pipe, decode_stride=None).decode.stride == window // 4
    assert large_image_settings(compat_pipe, decode_stride=window // 2).decode.stride == window // 2
    with pytest.raises(ConfigError, match="decode stride must be between 1 and the window"):
        large_image_settings(compat_pipe, decode_stride=window + 1)
    official = plan_large("brca", size=4096, out=tmp_path / "a.tif", calibrate=False)
    coarse = plan_large("brca", size=4096, out=tmp_path / "a.tif", decode_stride=32, calibrate=False)
    (o,), (c,) = official.stages, coarse.stages
    assert o.decode_windows == 61**2 and c.decode_windows == 31**2  # (4096/4 − 64)/stride + 1 per side


def test_cli_decode_stride_reaches_the_plan(small_checkpoint, small_config, tmp_path, capsys):
    import re

    args = ["generate", "--checkpoint", str(small_checkpoint), "--config", str(small_config), "--dry-run"]
    windows = []
    for extra in ([], ["--decode-stride", "8"]):
        code, stdout, err = run_cli([*args, "--guide", "10x", *extra], capsys)
        assert code == 0, err
        windows.append(int(re.search(r"decode: ([\d,]+) VQ windows", stdout)[1].replace(",", "")))
    assert windows[1] < windows[0], windows


def test_newton_max_t_limits_the_iterations_to_late_steps(compat_pipe):
    """``newton_max_t`` (CLI ``--newton-max-t``): Newton iterations only at outer steps with t ≤ it; the
    sampler does exactly the UNet rows and VQ passes the plan counts, and a bad value is one line."""
    cfg = JointSamplingConfig(t0=300, stride=100, inner_steps=2, newton_max_t=150)
    assert [cfg.iterations_at(t) for t in (300, 200, 100)] == [0, 0, 2]
    assert JointSamplingConfig().iterations_at(1000) == 10  # default: every step, as the authors
    for bad in (-1, 1001, 2.5):
        with pytest.raises(ConfigError, match="newton_max_t"):
            JointSamplingConfig(newton_max_t=bad)
    grid = torch.from_numpy(np.random.default_rng(0).standard_normal((32, 2, 2))).float()
    runs = {}
    for max_t in (1000, 150):
        opts = dict(guide="10x", t0=300, stride=100, inner_steps=1, newton_max_t=max_t, no_postprocess=True)
        result = compat_pipe.generate_large(reference=grid, progress=False, **opts)
        (stage,) = plan_large(compat_pipe, calibrate=False, **opts).stages
        assert (stage.unet_rows, stage.vq_passes) == (
            result.metrics["unet_forwards"],
            result.metrics["vq_passes"],
        )
        assert result.settings["joint"]["newton_max_t"] == max_t
        runs[max_t] = stage
    assert runs[1000].newton_steps == 3 and runs[150].newton_steps == 1
    tiles = runs[150].tiles
    assert runs[1000].vq_passes - runs[150].vq_passes == 2 * 3 * tiles  # two steps × (decode + 2 encodes)
    short = dict(guide="10x", t0=300, stride=100, inner_steps=1, newton_max_t=150)
    assert "(in the last 1)" in "\n".join(plan_large(compat_pipe, calibrate=False, **short).lines())
