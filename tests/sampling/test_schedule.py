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
