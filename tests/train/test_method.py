"""The pieces of the method, each against its definition (SPEC §1.5, §2.4-2.5): schedule, noising, loss,
conditioning dropout, warm-up, EMA decay, per-rank data streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoomldm.config import ZoomLDMConfig
from zoomldm.models import Summarizer
from zoomldm.schedule import official_betas
from zoomldm.train.config import OptimSection
from zoomldm.train.ema import official_ema
from zoomldm.train.objective import ZoomLDMTrainingModel, diffusion_loss, training_noise_scheduler
from zoomldm.train.optim import LinearWarmup, build_lr_scheduler, build_optimizer

SCHEDULE = {"beta_start": 0.0015, "beta_end": 0.0195, "num_train_timesteps": 1000}


def test_add_noise_is_the_official_forward_process():
    """x_t = √ᾱ_t·z0 + √(1−ᾱ_t)·ε with ᾱ from float64 linspace(√0.0015, √0.0195)² (the checkpoint buffers)."""
    sched = training_noise_scheduler(SCHEDULE)
    abar = torch.cumprod(1 - official_betas(SCHEDULE), 0)  # float64 reference
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(5, 3, 8, 8, generator=g), torch.randn(5, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 500, 998, 999])
    got = sched.add_noise(z0, eps, t)
    a = abar[t].view(-1, 1, 1, 1)
    expected = a.sqrt() * z0.double() + (1 - a).sqrt() * eps.double()
    # float32 arithmetic on float32 ᾱ: a few ulp of |x| ≤ ~5
    assert (got.double() - expected).abs().max() < 2e-6
    assert sched.alphas_cumprod.dtype == torch.float32
    assert torch.equal(sched.alphas_cumprod, abar.float())  # bit-exact buffer


def _tiny_model(seed=0):
    cfg = ZoomLDMConfig.from_preset("tiny")
    from zoomldm.models import build_unet

    torch.manual_seed(seed)
    return ZoomLDMTrainingModel(build_unet(cfg.unet), Summarizer(**cfg.summarizer)), cfg


def test_loss_is_eps_mse_with_draws_from_the_generator_in_order():
    """diffusion_loss = mean over C,H,W of (UNet(x_t, t, Summarizer(grid, mag)) − ε)², with t then ε then the
    dropout mask drawn from the given generator; recomputed here by hand from the same draws."""
    model, cfg = _tiny_model()
    sched = training_noise_scheduler(cfg.schedule)
    z0 = torch.randn(3, 3, 16, 16)
    ssl = [torch.randn(64, 1, 1), torch.randn(64, 2, 2), torch.randn(64, 8, 8)]
    mag = torch.tensor([0, 1, 3])
    got = diffusion_loss(model, sched, z0, ssl, mag, 0.5, torch.Generator().manual_seed(3))

    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 1000, (3,), generator=g)
    eps = torch.randn(z0.shape, generator=g)
    keep = torch.rand(3, generator=g) >= 0.5
    context = model.summarizer(ssl, mag) * keep[:, None, None]
    pred = model.unet(sched.add_noise(z0, eps, t), t, encoder_hidden_states=context).sample
    expected = ((pred - eps) ** 2).mean(dim=(1, 2, 3))
    assert got.shape == (3,)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_min_snr_weighting_multiplies_each_samples_loss():
    """``snr_gamma``: the same draws, each sample's ε-MSE times min(SNR_t, γ)/SNR_t (SNR = ᾱ/(1−ᾱ)); 1 where
    SNR ≤ γ (noisy steps), below 1 for the nearly clean ones."""
    from zoomldm.train.objective import min_snr_weights

    model, cfg = _tiny_model()
    sched = training_noise_scheduler(cfg.schedule)
    z0 = torch.randn(4, 3, 16, 16)
    ssl = [torch.randn(64, 2, 2)] * 4
    mag = torch.tensor([0, 1, 2, 3])
    plain = diffusion_loss(model, sched, z0, ssl, mag, 0.0, torch.Generator().manual_seed(5))
    weighted = diffusion_loss(
        model, sched, z0, ssl, mag, 0.0, torch.Generator().manual_seed(5), snr_gamma=5.0
    )
    t = torch.randint(0, 1000, (4,), generator=torch.Generator().manual_seed(5))
    abar = sched.alphas_cumprod.double()[t]
    snr = abar / (1 - abar)
    torch.testing.assert_close(weighted, plain * (torch.clamp(snr, max=5.0) / snr).float(), rtol=1e-6, atol=0)
    w = min_snr_weights(sched, torch.tensor([0, 50, 300, 999]), 5.0)
    assert w[0] < 0.01 and 0 < w[1] < 1 and w[2] == 1 and w[3] == 1, w  # SNR(0) ≈ 666, SNR(300) ≈ 1


def test_conditioning_dropout_zeroes_whole_contexts_at_rate_p():
    ctx = torch.randn(4000, 65, 8) + 3.0
    out = Summarizer.drop_conditions(ctx, 0.1, torch.Generator().manual_seed(0))
    zero = (out == 0).all(dim=(1, 2))
    kept = (out == ctx).all(dim=(1, 2))
    assert bool((zero | kept).all())  # whole contexts, never partial
    assert abs(zero.float().mean().item() - 0.1) < 0.015  # 4000 draws: 3σ ≈ 0.014


def test_warmup_is_lambda_linear_scheduler():
    """The authors' LambdaLinearScheduler: f(n) = 1e-6 + (1 − 1e-6)·n/1000 for n < 1000, then 1."""
    f = LinearWarmup(1000, 1e-6)
    assert f(0) == 1e-6 and f(1000) == 1.0 and f(10**7) == 1.0
    assert f(500) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5, abs=1e-15)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([p], OptimSection())
    assert opt.defaults["lr"] == 2e-5 and opt.defaults["betas"] == (0.9, 0.999)
    assert opt.defaults["eps"] == 1e-8 and opt.defaults["weight_decay"] == 0.01
    sched = build_lr_scheduler(opt, OptimSection())
    lrs = []
    for _ in range(1002):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2e-5 * 1e-6) and lrs[1] == pytest.approx(2e-5 * (1e-6 + (1 - 1e-6) / 1000))
    assert lrs[1000] == lrs[1001] == pytest.approx(2e-5)


def test_ema_decay_is_the_official_formula_and_continues_a_counter():
    """n-th update uses min(0.9999, (1+n)/(10+n)) (LitEma), starting from an inherited num_updates."""
    p = torch.nn.Parameter(torch.zeros(3))
    ema = official_ema([p], 0.9999)
    decays = []
    for n in range(1, 6):
        with torch.no_grad():
            p.add_(1.0)
        ema.step([p])
        decays.append(ema.cur_decay_value)
        assert decays[-1] == pytest.approx(min(0.9999, (1 + n) / (10 + n)), abs=1e-12)
    # the update is shadow −= (1 − d)·(shadow − param), replayed by hand
    shadow = torch.zeros(3)
    for n, d in enumerate(decays, start=1):
        shadow = shadow - (1 - d) * (shadow - float(n))
    torch.testing.assert_close(ema.shadow_params[0], shadow, rtol=0, atol=1e-6)
    inherited = official_ema([p], 0.9999, num_updates=12345)
    inherited.step([p])
    assert inherited.optimization_step == 12346
    assert inherited.cur_decay_value == pytest.approx((1 + 12346) / (10 + 12346), abs=1e-12)


def test_loader_streams_differ_per_rank_repeat_per_seed_and_skip_exactly(train_store):
    """Magnification-balanced indices (the data engineer's sampler) per rank; resuming mid-epoch skips
    exactly the consumed batches."""
    from zoomldm.data.dataset import MultiScaleDataset
    from zoomldm.train.data import TrainLoader

    ds = MultiScaleDataset(train_store)

    def indices(rank, epoch, skip=0, seed=5):
        loader = TrainLoader(ds, 2, 0, seed, rank, 2, samples_per_epoch=24)
        return [b["index"].tolist() for b in loader.batches(epoch, skip)]

    r0, r1 = indices(0, 0), indices(1, 0)
    assert len(r0) == 6 and r0 != r1
    assert indices(0, 0) == r0 and indices(0, 1) != r0 and indices(0, 0, seed=6) != r0
    assert indices(0, 0, skip=4) == r0[4:]
    draws = TrainLoader(ds, 2, 0, 5, 0, 1, samples_per_epoch=3000).sampler.draw()
    counts = np.bincount([ds.locate(int(i))[0].index for i in draws], minlength=3)
    assert (
        np.abs(counts / 3000 - 1 / 3).max() < 0.03
    )  # uniform over levels despite 16/4/1 samples (3σ ≈ 0.026)
