"""Parity with the authors' code: every output in ../shared/compat/vectors.safetensors.

Tolerances (compat README, ~10x the worst difference the official code shows against itself):
single passes ``max|a−b| ≤ 5e-5·max(1, max|ref|)``; trajectories ``max|a−b| ≤ 2e-5·max|ref|``;
integer tensors exactly.
"""

from __future__ import annotations

import pytest
import torch

from zoomldm import ZoomLDMPipeline
from zoomldm.sampling.guidance import guided_eps
from zoomldm.schedule import make_scheduler, official_alphas_cumprod, official_betas

SINGLE = 5e-5
TRAJ = 2e-5


def assert_close_single(a: torch.Tensor, ref: torch.Tensor) -> None:
    err = (a.float() - ref.float()).abs().max().item()
    assert err <= SINGLE * max(1.0, ref.abs().max().item()), err


def assert_close_traj(a: torch.Tensor, ref: torch.Tensor) -> None:
    err = (a.float() - ref.float()).abs().max().item()
    assert err <= TRAJ * ref.abs().max().item(), err


@pytest.fixture(scope="module")
def pipe(small_checkpoint, small_config):
    return ZoomLDMPipeline.from_official(small_checkpoint, config=small_config, ema=True)


@pytest.fixture(scope="module")
def pipe_live(small_checkpoint, small_config):
    return ZoomLDMPipeline.from_official(small_checkpoint, config=small_config, ema=False)


@pytest.mark.parametrize("ema", [True, False])
@pytest.mark.parametrize("zero_context", [False, True])
def test_unet(pipe, pipe_live, vectors, ema, zero_context):
    p = pipe if ema else pipe_live
    ctx = vectors["unet/context"]
    if zero_context:
        ctx = torch.zeros_like(ctx)
    name = f"unet/eps_{'ema' if ema else 'live'}" + ("_zero_context" if zero_context else "")
    with torch.no_grad():
        for k, t in enumerate(vectors["unet/t"]):
            assert_close_single(
                p.unet(vectors["unet/x"], t, encoder_hidden_states=ctx).sample, vectors[name][k]
            )


def test_live_and_ema_differ(pipe, pipe_live, vectors):
    x, t, ctx = vectors["unet/x"], vectors["unet/t"][0], vectors["unet/context"]
    with torch.no_grad():
        diff = (
            pipe.unet(x, t, encoder_hidden_states=ctx).sample
            - pipe_live.unet(x, t, encoder_hidden_states=ctx).sample
        )
    assert diff.abs().max() > 1e-2  # the fixture's EMA is live + 1% noise: the choice must matter


@pytest.mark.parametrize("g", [1, 2, 4, 8])
def test_summarizer_grid(pipe, vectors, g):
    with torch.no_grad():
        tokens = pipe.summarizer.embed_grids(vectors[f"summarizer/g{g}/ssl_feat"])
        out = pipe.summarizer(vectors[f"summarizer/g{g}/ssl_feat"], vectors[f"summarizer/g{g}/mag"])
    assert_close_single(tokens, vectors[f"summarizer/g{g}/tokens"])
    assert_close_single(out, vectors[f"summarizer/g{g}/out"])


def test_summarizer_mixed_batch(pipe, vectors):
    grids = [vectors[f"summarizer/mixed/ssl_feat_{i}"] for i in range(4)]
    with torch.no_grad():
        out = pipe.summarizer(grids, vectors["summarizer/mixed/mag"])
    assert_close_single(out, vectors["summarizer/mixed/out"])
    assert out.shape == (4, 65, 64)


def test_sample_cond(pipe, vectors):
    with torch.no_grad():
        assert_close_single(
            pipe.summarizer(vectors["sample/ssl_feat"], vectors["sample/mag"]), vectors["sample/cond"]
        )


def test_vq(pipe, vectors):
    with torch.no_grad():
        prequant = pipe.vae.encode(vectors["vq/x"]).latents
        quant, _, (_, _, idx) = pipe.vae.quantize(vectors["vq/prequant"])
        decoded = pipe.vae.decode(vectors["vq/prequant"]).sample
        decoded_nq = pipe.vae.decode(vectors["vq/prequant"], force_not_quantize=True).sample
    assert_close_single(prequant, vectors["vq/prequant"])
    assert_close_single(quant, vectors["vq/quant"])
    assert torch.equal(idx.reshape(vectors["vq/indices"].shape), vectors["vq/indices"])
    assert_close_single(decoded, vectors["vq/decoded"])
    assert_close_single(decoded_nq, vectors["vq/decoded_noquant"])


def test_schedule_buffers_exact(vectors, pipe):
    sched = pipe.config.schedule
    assert torch.equal(official_alphas_cumprod(sched), vectors["schedule/alphas_cumprod"])
    assert torch.equal(official_betas(sched).float(), vectors["schedule/betas"])


@pytest.mark.parametrize("name", ["ddim", "plms"])
def test_trajectory(pipe, vectors, name):
    """The full 10-step guided trajectory, call by call, and the decoded sample."""
    s = float(vectors["sample/guidance_scale"])
    calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def record(i, t, x, eps):
        calls.append((t, x.clone(), eps.clone()))

    x = pipe.denoise(
        vectors["sample/x_T"], vectors["sample/cond"], 10, s, scheduler=name, callback=record, progress=False
    )
    assert [c[0] for c in calls] == vectors[f"{name}/call_t"].tolist()
    for k, (t, x_call, _) in enumerate(calls):
        assert_close_traj(x_call, vectors[f"{name}/call_x"][k])
        with torch.no_grad():
            e_u = pipe.unet(x_call, t, encoder_hidden_states=torch.zeros_like(vectors["sample/cond"])).sample
            e_c = pipe.unet(x_call, t, encoder_hidden_states=vectors["sample/cond"]).sample
        assert_close_single(e_u, vectors[f"{name}/call_eps_uncond"][k])
        assert_close_single(e_c, vectors[f"{name}/call_eps_cond"][k])
    assert_close_traj(x, vectors[f"{name}/x_inter"][-1])
    # decoding is checked on the stored sample (quantisation is discontinuous; compat README)
    assert_close_single(
        pipe.decode_latents(vectors[f"{name}/x_inter"][-1]), vectors[f"{name}/sample_decoded"].clamp(-1, 1)
    )


def test_ddim_timesteps_and_alphas(pipe, vectors):
    sched = make_scheduler("ddim", pipe.config.schedule)
    sched.set_timesteps(10)
    assert torch.equal(sched.timesteps.flip(0), vectors["ddim/timesteps"])
    ac = sched.alphas_cumprod
    assert torch.equal(ac[sched.timesteps.flip(0)].double(), vectors["ddim/alphas"])
    prev = torch.cat([ac[:1], ac[sched.timesteps.flip(0)[:-1]]])
    assert torch.equal(prev.double(), vectors["ddim/alphas_prev"])


def test_ddim_pred_x0(pipe, vectors):
    """pred_x0 of each DDIM step from the stored call inputs (official formula)."""
    ac = official_alphas_cumprod(pipe.config.schedule)
    s = float(vectors["sample/guidance_scale"])
    for k, t in enumerate(vectors["ddim/call_t"].tolist()):
        x = vectors["ddim/call_x"][k]
        with torch.no_grad():
            e = guided_eps(pipe.unet, x, t, vectors["sample/cond"], s)
        a = ac[t]
        assert_close_traj((x - (1 - a).sqrt() * e) / a.sqrt(), vectors["ddim/pred_x0"][k])


def test_large_image_guidance_formula(pipe, vectors):
    """``model_pred``: (w+1)·e_c − w·e_u with t passed as given equals our guided ε with s = w + 1."""
    w = float(vectors["largeimg/w"])
    t = int(vectors["largeimg/t"])
    with torch.no_grad():
        eps = guided_eps(
            pipe.unet, vectors["largeimg/x"], torch.tensor(float(t)), vectors["sample/cond"], w + 1
        )
    assert_close_single(eps, vectors["largeimg/eps"])


def test_dpm_solver_and_bf16_run(pipe, vectors):
    """DPM-Solver++ (not in the official code) runs on the same schedule; bf16 stays close to fp32."""
    x = pipe.denoise(vectors["sample/x_T"], vectors["sample/cond"], 5, 2.0, scheduler="dpm++", progress=False)
    assert x.shape == vectors["sample/x_T"].shape and torch.isfinite(x).all()
    ref = pipe.unet(vectors["unet/x"], 500, encoder_hidden_states=vectors["unet/context"]).sample
    pipe.to(dtype="bfloat16")
    try:
        eps = guided_eps(pipe.unet, vectors["unet/x"], 500, vectors["unet/context"], 1.0)
    finally:
        pipe.to(dtype="float32")
    assert eps.dtype == torch.float32
    assert (eps - ref).abs().max() < 0.05 * ref.abs().max()  # bf16 has ~3 significant digits
