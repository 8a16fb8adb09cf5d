"""CDM diffusion: schedule and DDIM against ADM/diffusers, the VB loss, and a tiny CDM that learns."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from _fixtures import one_thread
from zoomldm.errors import ZoomLDMError
from zoomldm.models.cdm import ConditioningDiT
from zoomldm.models.cdm_diffusion import (
    CDMDiffusion,
    CDMSampler,
    ddim_update,
    respaced_timesteps,
    sample_cdm,
)


def _adm_cosine_betas(T: int = 1000, max_beta: float = 0.999) -> np.ndarray:
    """ADM/DiT ``betas_for_alpha_bar`` with the squaredcos_cap_v2 ᾱ(t), in float64 (SPEC §6)."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)])


def test_diffusers_cosine_betas_equal_the_adm_formula() -> None:
    diffusion = CDMDiffusion()
    adm = _adm_cosine_betas()
    ours = diffusion.betas.numpy()
    # diffusers stores float32 betas: equal to the float64 formula up to float32 rounding
    assert np.abs(ours - adm).max() < 5e-8 and ours[-1] == pytest.approx(0.999, rel=1e-7)
    # ᾱ recomputed in float64 from them: ≤ 2e-5 relative even at t = 999, where ᾱ ≈ 2.4e-9
    ab = np.cumprod(1 - adm)
    assert np.max(np.abs(diffusion.alphas_cumprod.numpy() - ab) / ab) < 2e-5
    # the derived posterior quantities follow ADM's definitions (clipped log variance at t = 0)
    ab_prev = np.append(1.0, ab[:-1])
    post = adm * (1 - ab_prev) / (1 - ab)
    np.testing.assert_allclose(diffusion.posterior_variance.numpy(), post, rtol=1e-4, atol=1e-12)
    assert diffusion.posterior_log_variance_clipped[0] == diffusion.posterior_log_variance_clipped[1]
    assert diffusion.scheduler.config.prediction_type == "sample"
    assert diffusion.scheduler.config.variance_type == "learned_range"


def test_respaced_timesteps_are_adm_and_diffusers_linspace() -> None:
    steps = respaced_timesteps(1000, 200)
    # ADM space_timesteps(1000, "200"): frac_stride = 999/199, round(i·stride)
    adm = [round(i * (999 / 199)) for i in range(200)]
    assert steps.tolist() == adm and steps[0] == 0 and steps[-1] == 999
    assert sorted(np.unique(np.diff(steps)).tolist()) == [5, 6] and (np.diff(steps) == 6).sum() == 4
    ddim = DDIMScheduler(
        beta_schedule="squaredcos_cap_v2", prediction_type="sample", timestep_spacing="linspace"
    )
    ddim.set_timesteps(200)
    assert ddim.timesteps.flip(0).tolist() == steps.tolist()
    assert respaced_timesteps(1000, 1).tolist() == [0]
    with pytest.raises(ZoomLDMError):
        respaced_timesteps(1000, 1001)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_update_matches_diffusers_ddim_step_with_x0_prediction(eta: float) -> None:
    diffusion = CDMDiffusion()
    sched = DDIMScheduler(
        beta_schedule="squaredcos_cap_v2", prediction_type="sample", clip_sample=False, set_alpha_to_one=True
    )
    sched.set_timesteps(200)  # "leading": uniform stride 5, where diffusers' prev = t − 5 is exact
    g = torch.Generator().manual_seed(0)
    for t in [995, 500, 5, 0]:
        x_t, x0, noise = (torch.randn(2, 65, 16, generator=g) for _ in range(3))
        expected = sched.step(x0, t, x_t, eta=eta, variance_noise=noise).prev_sample
        a = diffusion.alphas_cumprod[t].float()
        a_prev = diffusion.alphas_cumprod[t - 5].float() if t >= 5 else torch.tensor(1.0)
        got = ddim_update(x0, x_t, a, a_prev, eta=eta, noise=noise)
        torch.testing.assert_close(got, expected, rtol=2e-4, atol=2e-5)
        if eta == 0:  # the closed form: x_prev = √ᾱ' x̂0 + √(1−ᾱ') ε̂ with ε̂ from x_t and x̂0
            eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
            torch.testing.assert_close(
                got, a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps, rtol=1e-6, atol=1e-6
            )


def test_posterior_and_learned_range_variance_match_diffusers_ddpm_step() -> None:
    diffusion = CDMDiffusion()
    sched = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2",
        prediction_type="sample",
        variance_type="learned_range",
        clip_sample=False,
    )
    # diffusers keeps ᾱ in float32, so its β_t = 1 − ᾱ_t/ᾱ_{t−1} is off by up to 4e-4 relative at small t
    # (one reason the posterior is computed in float64 here); give it float64 ᾱ to compare the formulas
    sched.alphas_cumprod = torch.cumprod(1 - sched.betas.double(), 0)
    g = torch.Generator().manual_seed(1)
    for t in [999, 400, 1, 0]:
        x_t = torch.randn(2, 65, 16, generator=g)
        out = torch.cat([torch.randn(2, 65, 16, generator=g), torch.rand(2, 65, 16, generator=g) * 2 - 1], -1)
        tt = torch.full((2,), t)
        mean, log_var, x0 = diffusion.p_mean_variance(out, x_t, tt)
        torch.testing.assert_close(x0, out[..., :16], rtol=0, atol=0)
        # diffusers works channels-first and splits the learned variance off dim 1
        seed = 100 + t
        prev = sched.step(
            out.transpose(1, 2), t, x_t.transpose(1, 2), generator=torch.Generator().manual_seed(seed)
        )
        noise = randn_tensor((2, 16, 65), generator=torch.Generator().manual_seed(seed)).transpose(1, 2)
        ours = mean + (torch.exp(0.5 * log_var) * noise if t > 0 else 0)
        torch.testing.assert_close(ours, prev.prev_sample.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_vb_term_closed_forms_and_stop_gradient() -> None:
    diffusion = CDMDiffusion()
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, 65, 8, generator=g)
    noise = torch.randn(4, 65, 8, generator=g)
    mag = torch.zeros(4, dtype=torch.long)

    # a perfect model: x̂0 = x0 and v = −1 (log variance = the clipped posterior's) → KL 0, MSE 0
    def oracle(x_t, t, y):
        return torch.cat([x0, -torch.ones_like(x0)], -1)

    t = torch.tensor([999, 500, 10, 1])
    losses = diffusion.training_losses(oracle, x0, mag, t=t, noise=noise)
    assert losses["mse"].abs().max() == 0 and losses["vb"].abs().max() < 1e-5

    # the KL against torch.distributions, for an arbitrary model output
    v = torch.rand(4, 65, 8, generator=g) * 2 - 1
    x0_hat = torch.randn(4, 65, 8, generator=g)
    losses = diffusion.training_losses(lambda *a: torch.cat([x0_hat, v], -1), x0, mag, t=t, noise=noise)
    x_t = diffusion.scheduler.add_noise(x0, noise, t)
    true_mean, true_log_var = diffusion.q_posterior(x0, x_t, t)
    mean, log_var, _ = diffusion.p_mean_variance(torch.cat([x0_hat, v], -1), x_t, t)
    normal = torch.distributions.Normal
    kl = torch.distributions.kl_divergence(
        normal(true_mean, (0.5 * true_log_var).exp()), normal(mean, (0.5 * log_var).exp())
    )
    torch.testing.assert_close(losses["vb"], kl.flatten(1).mean(1) / math.log(2), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses["mse"], ((x0_hat - x0) ** 2).flatten(1).mean(1), rtol=1e-6, atol=0)

    # t = 0: continuous Gaussian NLL of x0 under p (bits per dimension)
    t0 = torch.zeros(4, dtype=torch.long)
    losses0 = diffusion.training_losses(lambda *a: torch.cat([x0_hat, v], -1), x0, mag, t=t0, noise=noise)
    x_t0 = diffusion.scheduler.add_noise(x0, noise, t0)
    mean0, log_var0, _ = diffusion.p_mean_variance(torch.cat([x0_hat, v], -1), x_t0, t0)
    nll = -normal(mean0, (0.5 * log_var0).exp()).log_prob(x0)
    torch.testing.assert_close(losses0["vb"], nll.flatten(1).mean(1) / math.log(2), rtol=1e-4, atol=1e-4)

    # stop-gradient: the VB term does not reach the x̂0 head, only the variance head
    x0_param = x0_hat.clone().requires_grad_(True)
    v_param = v.clone().requires_grad_(True)
    vb = diffusion.training_losses(lambda *a: torch.cat([x0_param, v_param], -1), x0, mag, t=t, noise=noise)[
        "vb"
    ]
    vb.sum().backward()
    assert x0_param.grad is None or x0_param.grad.abs().max() == 0
    assert v_param.grad.abs().max() > 0


def test_ddim_sampling_loop_timesteps_noise_layout_and_endpoint() -> None:
    diffusion = CDMDiffusion()
    target = torch.randn(3, 65, 8, generator=torch.Generator().manual_seed(3))
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def fixed_x0(x, t, y):  # a model that always predicts the same x0
        calls.append((x.clone(), t.clone()))
        assert torch.equal(y, torch.tensor([0, 4, 7]))
        return torch.cat([target, torch.zeros_like(target)], -1)

    out = diffusion.ddim_sample(
        fixed_x0,
        torch.tensor([0, 4, 7]),
        (3, 65, 8),
        num_steps=20,
        generator=torch.Generator().manual_seed(9),
    )
    assert [int(t[0]) for _, t in calls] == respaced_timesteps(1000, 20)[::-1].tolist()
    # the last step has ᾱ_prev = 1, so DDIM lands exactly on the predicted x0
    torch.testing.assert_close(out, target, rtol=0, atol=1e-5)
    # the noise is drawn channels-first like the authors' script ([B, 512, 65]) and transposed
    expected_noise = torch.randn(3, 8, 65, generator=torch.Generator().manual_seed(9)).transpose(1, 2)
    torch.testing.assert_close(calls[0][0], expected_noise, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# A tiny CDM learns a mixture with one mean per magnification (LayerNorm'd like Summarizer tokens).
# ------------------------------------------------------------------------------------------------
D, LEVELS = 64, 4


def _mixture(n: int, gen: torch.Generator, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, LEVELS, (n,), generator=gen)
    x = means[y] + 0.5 * torch.randn(n, 65, D, generator=gen)
    return torch.nn.functional.layer_norm(x, (D,)), y  # per-token standardised, as the Summarizer's output


#: seeds of the tiny training run: the verdicts below must hold for each, with the margins measured
#: over them (the magnification accuracy was 1.0 for all 6 seeds tried, the own/mean distance ratio
#: 0.17–0.24 against the 0.6 bound; with the VB gradient through the trunk, 1 to 5 of them failed)
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module", params=SEEDS)
def trained_cdm(request: pytest.FixtureRequest) -> Iterator[dict]:
    with one_thread():
        yield _train_tiny_cdm(request.param)


def _train_tiny_cdm(seed: int, vb_through_trunk: bool = False, steps: int = 200) -> dict:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(LEVELS, 1, D, generator=g) + torch.randn(1, 65, D, generator=g)
    model = ConditioningDiT(token_dim=D, hidden_size=64, depth=2, num_heads=4, num_magnifications=LEVELS)
    diffusion = CDMDiffusion(vb_through_trunk=vb_through_trunk)
    ev = torch.Generator().manual_seed(5)
    x_eval, y_eval = _mixture(256, ev, means)
    t_eval = torch.randint(0, 1000, (256,), generator=ev)
    n_eval = torch.randn(x_eval.shape, generator=ev)

    def eval_loss() -> float:
        with torch.no_grad():
            return (
                diffusion.training_losses(model, x_eval, y_eval, t=t_eval, noise=n_eval)["loss"].mean().item()
            )

    before = eval_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        x, y = _mixture(32, gen, means)
        loss = diffusion.training_losses(model, x, y, generator=gen)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"model": model, "before": before, "after": eval_loss(), "means": means, "seed": seed}


def _low_t_error(trained: dict, t: int = 10) -> float:
    """x̂0's mean squared error at a small t on the class centres (what DDIM's last steps read)."""
    model, means = trained["model"], trained["means"]
    centres = torch.nn.functional.layer_norm(means.expand(LEVELS, 65, D), (D,))
    noise = torch.randn(centres.shape, generator=torch.Generator().manual_seed(7))
    x_t = CDMDiffusion().scheduler.add_noise(centres, noise, torch.full((LEVELS,), t))
    with torch.no_grad():
        x0 = model(x_t, torch.full((LEVELS,), t), torch.arange(LEVELS))[..., :D]
    return float(((x0 - centres) ** 2).mean())


def test_cdm_training_loss_falls(trained_cdm: dict) -> None:
    # fixed evaluation batch (same x0, t, noise before and after): measured 12.4 → 0.2–0.4 over the seeds
    assert trained_cdm["after"] < trained_cdm["before"] / 10
    # and x̂0 is good where the sampler ends (measured 0.03–0.04 at t = 10; 0.3–6 with the VB through
    # the trunk, against 0.17 at t = 200)
    assert _low_t_error(trained_cdm) < 0.1


def test_the_vb_gradient_stops_at_the_variance_rows_of_the_output_layer() -> None:
    torch.manual_seed(0)
    model = ConditioningDiT(token_dim=8, hidden_size=16, depth=1, num_heads=2, num_magnifications=2)
    for p in model.parameters():  # no adaLN-Zero zeros: every parameter gets a gradient
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(3, 65, 8)
    t, y = torch.tensor([1, 500, 999]), torch.tensor([0, 1, 0])
    # the same output up to float rounding (two matmuls instead of one)
    torch.testing.assert_close(model(x, t, y, detach_variance=True), model(x, t, y), rtol=1e-5, atol=1e-6)
    for through, trunk_moves in ((False, False), (True, True)):
        model.zero_grad()
        losses = CDMDiffusion(vb_through_trunk=through).training_losses(model, x, y, t=t)
        losses["vb"].sum().backward()
        w = model.final_layer.linear.weight.grad
        assert w[:8].abs().max() == 0 and w[8:].abs().max() > 0  # x̂0 rows: never; variance rows: yes
        trunk = model.x_embedder.weight.grad
        assert (trunk is not None and trunk.abs().max() > 0) == trunk_moves


def test_cdm_samples_have_the_shape_and_token_statistics_of_the_data(trained_cdm: dict) -> None:
    with one_thread():
        _check_samples(trained_cdm)


def _check_samples(trained_cdm: dict) -> None:
    model = trained_cdm["model"]
    y = torch.arange(LEVELS).repeat(4)
    samples = sample_cdm(model, y, num_steps=50, generator=torch.Generator().manual_seed(2))
    assert samples.shape == (16, 65, D) and torch.isfinite(samples).all()
    assert model.training  # sample_cdm restores the mode
    # training tokens are per-token standardised (mean 0, std 1 over channels); samples follow
    assert samples.mean(-1).abs().mean() < 0.1
    assert 0.75 < samples.std(-1).mean() < 1.25
    # and they are conditioned: closer to their own magnification's mean than to the others
    centres = torch.nn.functional.layer_norm(trained_cdm["means"].expand(LEVELS, 65, D), (D,))
    dist = ((samples[:, None] - centres[None]) ** 2).mean((-1, -2))  # [16, LEVELS]
    own = dist[torch.arange(16), y]
    assert (dist.argmin(1) == y).float().mean() >= 0.75
    assert own.mean() < 0.6 * dist.mean()
    # CDMSampler is the same sampler as a condition source
    again = CDMSampler(model, num_steps=50)(y, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(again, samples, rtol=0, atol=0)
    with pytest.raises(ZoomLDMError, match="batch_size"):
        sample_cdm(model, torch.tensor([0, 1]), batch_size=3, num_steps=2)
    assert sample_cdm(model, 2, batch_size=3, num_steps=2).shape == (3, 65, D)
