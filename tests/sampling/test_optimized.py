"""Joint sampling with ``ZoomLDMPipeline.optimize`` settings gives the tiles of the plain pipeline.

Comparing tiles is only meaningful for the first Newton iteration: the official update
``x += lr·N(g)`` always moves by ``lr`` in ∞-norm along a normalised finite-difference direction, so the
loop amplifies rounding-level differences (measured here: a 1e-6 relative change of the initial noise moves
tiles by 2e-3 after 1 iteration, 3e-2 after 2, 0.5 after 3 and 1.7 after 5; see docs/large_images.md,
"Reproducibility"). Beyond that, the check is that the constraint does its job equally well. The exact
linear f4 autoencoder of ``conftest.py`` stands in for the compat VQ (whose random decoder ignores the
constraint, and whose quantiser adds code flips to the rounding).
"""

from __future__ import annotations

import torch

from zoomldm import ZoomLDMPipeline
from zoomldm.sampling.constrained import JointSamplingConfig, SampledGuide, constrained_sample


def _run(pipe: ZoomLDMPipeline, inner_steps: int):
    lat, dim = pipe.config.latent_size, pipe.config.context_dim
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(4, 65, dim, generator=g)
    noise = torch.randn(4, 3, lat, lat, generator=g)
    guide = SampledGuide(torch.randn(1, 65, dim, generator=g), torch.randn(1, 3, lat, lat, generator=g))
    cfg = JointSamplingConfig(inner_steps=inner_steps, tile_batch=4)
    return constrained_sample(
        pipe, pipe.scales[1], ctx, noise, guide, config=cfg, start_step=18, progress=False
    )


def test_optimized_pipeline_gives_the_same_joint_tiles(small_checkpoint, small_config, area_pipe):
    fresh = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config)
    optimized = ZoomLDMPipeline(fresh.unet, type(area_pipe.vae)(), fresh.summarizer, fresh.config)
    optimized.optimize(channels_last=True)
    assert optimized.inference_settings["fused_qkv"] > 0
    for inner, atol in ((0, 1e-4), (1, 2e-2)):
        ref, out = _run(area_pipe, inner), _run(optimized, inner)
        torch.testing.assert_close(out.tiles, ref.tiles, rtol=0, atol=atol, msg=f"{inner} Newton iterations")
        assert out.metrics["unet_forwards"] == ref.metrics["unet_forwards"]
    ref, out = _run(area_pipe, 5), _run(optimized, 5)
    unconstrained = _run(area_pipe, 0)
    assert out.metrics["tiles_psnr"] > unconstrained.metrics["tiles_psnr"] + 1.0
    assert abs(out.metrics["tiles_psnr"] - ref.metrics["tiles_psnr"]) < 1.0
