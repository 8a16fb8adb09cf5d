"""Seam-removal post-processing (SPEC §4.5): shapes, chunking, condition caching, weights choice, errors."""

from __future__ import annotations

import pytest
import torch

from zoomldm import ZoomLDMPipeline
from zoomldm.errors import ZoomLDMError
from zoomldm.sampling.postprocess import PostprocessConfig, postprocess_latent

CANVAS = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))  # 2×2 tiles of the compat model
GRID = torch.randn(32, 2, 2, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reference(trained_vq_pipe):
    # t0 = 50: one step; window 16 (one latent tile), stride 4 → 5×5 = 25 windows
    return postprocess_latent(
        trained_vq_pipe, CANVAS, GRID, config=PostprocessConfig(t0=50), seed=0, progress=False
    )


def test_shape_and_content_kept_at_low_noise(reference):
    assert reference.shape == CANVAS.shape and reference.dtype == torch.float32
    # re-noised to t = 50 (ᾱ ≈ 0.93) and denoised once: the canvas is changed but keeps its content
    corr = torch.corrcoef(torch.stack([reference.flatten(), CANVAS.flatten()]))[0, 1]
    assert corr > 0.8 and (reference - CANVAS).abs().mean() > 1e-2


def test_chunking_and_condition_cache_do_not_change_the_result(trained_vq_pipe, reference):
    other = postprocess_latent(
        trained_vq_pipe,
        CANVAS,
        GRID,
        config=PostprocessConfig(t0=50, window_batch=7, context_cache_mib=0),
        seed=0,
        progress=False,
    )
    assert torch.allclose(other, reference, atol=1e-4)
    assert not torch.allclose(
        postprocess_latent(
            trained_vq_pipe, CANVAS, GRID, config=PostprocessConfig(t0=50), seed=1, progress=False
        ),
        reference,
        atol=1e-2,
    )


def test_live_weights_option(trained_vq_pipe, reference, small_checkpoint, small_config):
    cfg = PostprocessConfig(t0=50, use_live_weights=True)
    with pytest.raises(ZoomLDMError, match="live UNet"):
        postprocess_latent(trained_vq_pipe, CANVAS, GRID, config=cfg, progress=False)
    live = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config, ema=False).unet
    out = postprocess_latent(trained_vq_pipe, CANVAS, GRID, config=cfg, unet=live, seed=0, progress=False)
    assert out.shape == CANVAS.shape and (out - reference).abs().max() > 1e-3  # EMA vs live weights differ


def test_bad_canvases_and_settings(trained_vq_pipe):
    with pytest.raises(ZoomLDMError, match="whole 16-px tiles"):
        postprocess_latent(trained_vq_pipe, torch.zeros(3, 24, 32), GRID, progress=False)
    with pytest.raises(ZoomLDMError, match="does not match"):
        postprocess_latent(trained_vq_pipe, CANVAS, torch.zeros(32, 3, 3), progress=False)
    with pytest.raises(ZoomLDMError, match="smaller than the window"):
        postprocess_latent(trained_vq_pipe, CANVAS, GRID, config=PostprocessConfig(window=40), progress=False)
    with pytest.raises(ZoomLDMError, match="interp"):
        PostprocessConfig(interp="cubic")
    with pytest.raises(ZoomLDMError, match="must not exceed"):
        PostprocessConfig(window=16, window_stride=32).resolved(16)
