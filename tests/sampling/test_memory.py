"""GPU-sized tile batches (``--tile-batch auto``): the fitting rule on CPU, the measurement on a GPU."""

from __future__ import annotations

import pytest
import torch

from zoomldm import ZoomLDMPipeline
from zoomldm.errors import ZoomLDMError
from zoomldm.sampling.constrained import JointSamplingConfig, SampledGuide, constrained_sample
from zoomldm.sampling.memory import MAX_BATCH, auto_tile_batch, fit_batch, newton_peak_bytes

GiB = 2**30


def affine(base: int, per_item: int):
    calls = []

    def peak(b: int) -> int:
        calls.append(b)
        return base + b * per_item

    return peak, calls


def test_fit_batch_is_the_largest_batch_within_the_budget():
    peak, calls = affine(base=2 * GiB, per_item=GiB // 2)
    # budget 10 GiB: 2 + b/2 ≤ 10 → b ≤ 16
    assert fit_batch(peak, 10 * GiB, limit=1000) == 16
    assert calls == [1, 2]  # two probes, whatever the budget
    assert peak(16) <= 10 * GiB < peak(17)


def test_fit_batch_limits():
    peak, _ = affine(base=GiB, per_item=1)
    assert fit_batch(peak, 100 * GiB, limit=40) == 40  # never more than there are tiles
    assert fit_batch(peak, 100 * GiB, limit=10**6) == MAX_BATCH
    peak, calls = affine(base=GiB, per_item=GiB)
    assert fit_batch(peak, 10 * GiB, limit=1) == 1 and calls == [1]
    assert fit_batch(peak, int(2.5 * GiB), limit=8) == 1  # one tile fits, two do not
    with pytest.raises(ZoomLDMError, match="one tile needs 3.0 GiB .* only 2.0 GiB are free"):
        fit_batch(affine(GiB, 2 * GiB)[0], 2 * GiB, limit=8)


def test_auto_on_a_cpu_keeps_the_default(small_checkpoint, small_config):
    pipe = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config)
    assert auto_tile_batch(pipe, 100) == 16 and auto_tile_batch(pipe, 3) == 3
    with pytest.raises(ZoomLDMError):
        JointSamplingConfig(tile_batch="many")
    lat, dim = pipe.config.latent_size, pipe.config.context_dim
    g = torch.Generator().manual_seed(0)
    guide = SampledGuide(torch.randn(1, 65, dim, generator=g), torch.randn(1, 3, lat, lat, generator=g))
    ctx, noise = torch.randn(4, 65, dim, generator=g), torch.randn(4, 3, lat, lat, generator=g)
    cfg = JointSamplingConfig(inner_steps=1, tile_batch="auto")
    result = constrained_sample(
        pipe, pipe.scales[1], ctx, noise, guide, config=cfg, start_step=19, progress=False
    )
    assert result.metrics["tile_batch"] == 4


@pytest.mark.gpu
def test_auto_tile_batch_fits_the_measured_memory(small_checkpoint, small_config):
    pipe = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config).to("cuda", "float16")
    one, two = newton_peak_bytes(pipe, 1), newton_peak_bytes(pipe, 2)
    assert two > one
    batch = auto_tile_batch(pipe, 64)
    assert 1 <= batch <= 64
    free, _ = torch.cuda.mem_get_info()
    assert newton_peak_bytes(pipe, batch) <= torch.cuda.memory_allocated() + free


@pytest.mark.gpu
def test_optimize_on_cuda_keeps_outputs(small_checkpoint, small_config):
    ref = ZoomLDMPipeline.from_official(small_checkpoint, config=small_config).to("cuda", "float16")
    fast = (
        ZoomLDMPipeline.from_official(small_checkpoint, config=small_config).to("cuda", "float16").optimize()
    )
    assert fast.inference_settings["channels_last"] is True
    x = torch.randn(4, 3, ref.config.latent_size, ref.config.latent_size, device="cuda", dtype=torch.float16)
    ctx = torch.randn(4, 65, ref.config.context_dim, device="cuda", dtype=torch.float16)
    t = torch.full((4,), 500.0, device="cuda")
    with torch.no_grad():
        a = ref.unet(x, t, encoder_hidden_states=ctx).sample.float()
        b = fast.unet(x, t, encoder_hidden_states=ctx).sample.float()
        da = ref.vae.decode(x, force_not_quantize=True).sample.float()
        db = fast.vae.decode(x, force_not_quantize=True).sample.float()
    torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2)  # float16 rounding of reordered sums
    torch.testing.assert_close(db, da, rtol=2e-2, atol=2e-2)
