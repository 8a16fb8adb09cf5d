"""Joint multi-scale sampling (SPEC §4.3): time grid, the official ε convention, the constraint's effect,
determinism by seed, viewport requests, outputs and resume, and input validation before model work."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch

from zoomldm.config import ZoomLDMConfig
from zoomldm.errors import ZoomLDMError
from zoomldm.evaluation.constraints import constraint_metrics
from zoomldm.io.tiff import read_provenance
from zoomldm.sampling import joint as joint_module
from zoomldm.sampling.conditions import guide_context, tile_contexts
from zoomldm.sampling.constrained import (
    JointSamplingConfig,
    SampledGuide,
    _Ops,
    constrained_sample,
    inf_normalize,
)
from zoomldm.sampling.decode import DecodeConfig
from zoomldm.sampling.joint import generate_large_image, plan_large_image, plan_stages
from zoomldm.sampling.noise import keyed_normal
from zoomldm.sampling.postprocess import PostprocessConfig
from zoomldm.sampling.strided import StridedStep, strided_steps, strided_update
from zoomldm.sampling.superres import SRConfig
from zoomldm.scales import PATHOLOGY
from zoomldm.schedule import official_alphas_cumprod, official_betas

FAST = JointSamplingConfig(t0=50, stride=50, inner_steps=1, tile_batch=4)  # one outer step
TEN_X = PATHOLOGY[1]  # internals take parsed levels (zoomldm.sampling.levels); the compat model is pathology


def test_official_defaults():
    c = JointSamplingConfig()
    assert (c.t0, c.stride, c.guidance_w, c.h, c.lr, c.inner_steps, c.tile_batch) == (
        1000,
        50,
        2.0,
        0.005,
        0.5,
        10,
        16,
    )
    assert c.variance_preserving_update
    sr = SRConfig()
    assert (sr.inner_steps, sr.t0, sr.stride, sr.guidance_w, sr.lr, sr.h) == (5, 1000, 50, 2.0, 0.5, 0.005)
    p = PostprocessConfig()
    assert (p.t0, p.stride, p.guidance_w, p.interp, p.use_live_weights) == (300, 50, 2.0, "slerp", False)
    assert p.resolved(64) == (64, 16)


def test_strided_grid_has_the_timestep_quirk(compat_pipe):
    steps = strided_steps(compat_pipe.config.schedule, 1000, 50)
    ac = official_alphas_cumprod(compat_pipe.config.schedule).double()
    betas = official_betas(compat_pipe.config.schedule).float().double()
    assert [s.t for s in steps] == list(range(1000, 0, -50))
    assert steps[0].alpha == float(ac[999]) and steps[0].alpha_prev == float(ac[949])
    assert steps[-1].alpha == float(ac[49]) and steps[-1].alpha_prev == float(ac[0])  # ends at ᾱ_0, not 1
    s = steps[3]
    assert s.beta_tilde == pytest.approx(
        float(betas[s.t - 1]) * (1 - s.alpha_prev) / (1 - s.alpha), rel=1e-12
    )
    x0, eps, xi = torch.ones(1), torch.full((1,), 2.0), torch.full((1,), 3.0)
    vp = strided_update(x0, eps, xi, s, True)
    colab = strided_update(x0, eps, xi, s, False)
    assert vp.item() == pytest.approx(
        s.alpha_prev**0.5 + 2 * (1 - s.alpha_prev - s.beta_tilde) ** 0.5 + 3 * s.beta_tilde**0.5
    )
    assert colab.item() == pytest.approx(
        s.alpha_prev**0.5 + 2 * (1 - s.alpha_prev) ** 0.5 + 3 * s.beta_tilde**0.5
    )


def test_eps_matches_the_official_model_pred(compat_pipe, vectors):
    # large_image_gen.utils.model_pred: batch [cond, 0·cond], (w+1)·e_c − w·e_u, float t (compat vectors)
    ops = _Ops(compat_pipe, compat_pipe.unet, float(vectors["largeimg/w"]))
    step = StridedStep(0, int(vectors["largeimg/t"]), 0.5, 0.5, 0.0)
    with torch.no_grad():
        eps = ops.eps(vectors["largeimg/x"], step, vectors["sample/cond"])
    ref = vectors["largeimg/eps"]
    assert (eps - ref).abs().max() <= 5e-5 * max(1.0, ref.abs().max().item())


def test_inf_normalize():
    v = torch.tensor([[[-4.0, 2.0]], [[0.5, 0.25]], [[0.0, 0.0]]])
    out = inf_normalize(v)
    assert out.abs().flatten(1).amax(1).tolist() == [1.0, 1.0, 0.0]
    assert torch.equal(out[0], torch.tensor([[-1.0, 0.5]]))


def _inputs(pipe, seed, k=2):
    grid = torch.randn(pipe.config.ssl_channels, k, k, generator=torch.Generator().manual_seed(seed))
    ids = list(range(k * k))
    ctx = tile_contexts(pipe, grid, pipe.scales[0], ids, k)
    guide = SampledGuide(
        guide_context(pipe, grid, pipe.scales[k.bit_length() - 1]),
        keyed_normal((3, 16, 16), seed, "guide_init", [0]),
    )
    return ctx, keyed_normal((3, 16, 16), seed, "tile_init", ids), guide


@pytest.mark.parametrize("seed", [0, 1])
def test_constraint_pulls_tiles_toward_the_guide(trained_vq_pipe, seed):
    # same noise, same guide: the Newton iterations (official h, lr, w) through the trained VQ-f4 must bring
    # down(decode(tile)) closer to the guide than unconstrained sampling does — by at least 1.0 dB PSNR and
    # 10% MAE (measured: +1.3 to +1.9 dB, −15 to −22% over seeds 0-3)
    ctx, noise, guide = _inputs(trained_vq_pipe, seed)
    runs = {
        n: constrained_sample(
            trained_vq_pipe,
            TEN_X,
            ctx,
            noise,
            guide,
            config=JointSamplingConfig(t0=50, inner_steps=n),
            seed=seed,
            progress=False,
        ).metrics
        for n in (0, 2)
    }
    for suffix in ("", "_cubic"):  # area downsampling, and the sampler's own cubic `down`
        assert runs[2]["tiles_psnr" + suffix] >= runs[0]["tiles_psnr" + suffix] + 1.0
        assert runs[2]["tiles_mae" + suffix] <= 0.9 * runs[0]["tiles_mae" + suffix]
    assert runs[0]["unet_forwards"] == 2 + 4 * 2 and runs[2]["unet_forwards"] == 2 + 4 * 2 * 5


def test_same_seed_same_tiles(trained_vq_pipe):
    ctx, noise, guide = _inputs(trained_vq_pipe, 0)
    a = constrained_sample(trained_vq_pipe, TEN_X, ctx, noise, guide, config=FAST, seed=0, progress=False)
    b = constrained_sample(trained_vq_pipe, TEN_X, ctx, noise, guide, config=FAST, seed=0, progress=False)
    c = constrained_sample(trained_vq_pipe, TEN_X, ctx, noise, guide, config=FAST, seed=1, progress=False)
    assert a.tiles.shape == (4, 3, 16, 16) and a.guide_latent.shape == (1, 3, 16, 16)
    assert a.guide_image.shape == (3, 64, 64) and a.guide_image.abs().max() <= 1
    assert torch.equal(a.tiles, b.tiles) and torch.equal(a.guide_latent, b.guide_latent)
    assert (a.tiles - c.tiles).abs().max() > 1e-2  # the per-step noise is keyed by the seed
    # VQ passes: guide decode, 1 Newton iteration (4 decodes + 2×4 encodes), final guide, 4 metric decodes
    assert np.isfinite(a.metrics["tiles_psnr"]) and a.metrics["vq_passes"] == 1 + 12 + 1 + 4


def test_viewport_requests_reproduce_the_tiles_of_the_full_image(trained_vq_pipe):
    # noise is keyed by tile index and step, and each tile's constraint uses its own guide footprint:
    # generating only the right column (tiles 1 and 3, in another batch layout) gives those tiles of the
    # full image, up to float rounding of batched convolutions (amplified by 1/h in the finite differences)
    ctx, noise, guide = _inputs(trained_vq_pipe, 3)
    full = constrained_sample(trained_vq_pipe, TEN_X, ctx, noise, guide, config=FAST, seed=3, progress=False)
    part = constrained_sample(
        trained_vq_pipe,
        TEN_X,
        ctx[[1, 3]],
        noise[[1, 3]],
        guide,
        tile_ids=[1, 3],
        config=JointSamplingConfig(t0=50, inner_steps=1, tile_batch=1),
        seed=3,
        progress=False,
    )
    assert part.tile_ids == [1, 3]
    assert torch.allclose(part.tiles, full.tiles[[1, 3]], atol=2e-3)
    assert (part.tiles - full.tiles[[0, 2]]).abs().max() > 0.1


def test_region_requests_are_bitwise_tiles_of_the_full_image(trained_vq_pipe):
    # Two outer steps with a Newton iteration each: enough for rounding differences of batched convolutions
    # to grow to visible ones (docs/large_images.md, "Reproducibility"). Batches are 2×2 canvas blocks, and
    # a region request also computes the rest of its blocks, so its tile is bitwise the full image's.
    grid = torch.randn(32, 4, 4, generator=torch.Generator().manual_seed(11))  # k = 4: 16 tiles of 64²
    config = JointSamplingConfig(t0=100, stride=50, inner_steps=1, tile_batch=4)
    # side-by-side decode windows (the official 1/4 stride decodes 169 windows through the trained VQ; the
    # decode does not touch the latents compared here)
    decode = DecodeConfig(window=16, stride=16)
    kwargs = dict(guide="5x", config=config, decode=decode, postprocess=False, seed=11, progress=False)
    full = generate_large_image(trained_vq_pipe, grid, **kwargs)
    part = generate_large_image(
        trained_vq_pipe, grid, region=(64, 64, 64, 64), **kwargs
    )  # tile (1, 1) = id 5
    assert part.latent.shape == (3, 16, 16) and part.metrics["computed_tiles"] == 4  # block {0, 1, 4, 5}
    assert torch.equal(part.latent, full.latent[:, 16:32, 16:32])
    assert full.metrics["computed_tiles"] == 16


def test_batches_are_canvas_blocks():
    from zoomldm.sampling.constrained import batch_rows, block_cover, block_shape

    assert [block_shape(b) for b in (1, 4, 8, 16, 37, 64)] == [(1, 1), (2, 2), (2, 4), (4, 4), (6, 6), (8, 8)]
    # a 4×4 canvas in 2×2 blocks; the request order does not change the batches
    assert batch_rows([5, 0, 15, 1], 4, 4) == [[1, 3, 0], [2]]  # positions, by tile id within a block
    assert batch_rows(list(range(16)), 4, 4)[0] == [0, 1, 4, 5]
    assert block_cover([5], 4, 4, 4) == [0, 1, 4, 5] and block_cover([15, 0], 4, 4, 16) == list(range(16))
    assert block_cover([5], 5, 3, 4) == [0, 1, 5, 6]  # edge blocks are clipped to the canvas
    assert block_cover([10], 5, 3, 4) == [10, 11]


@pytest.fixture(scope="module")
def large_run(compat_pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("large") / "large.tif"
    grid = torch.randn(32, 2, 2, generator=torch.Generator().manual_seed(5))
    result = generate_large_image(
        compat_pipe,
        grid,
        guide="10x",
        config=FAST,
        postprocess=PostprocessConfig(t0=50),
        seed=5,
        out=out,
        compression="zlib",
        progress=False,
    )
    return result, grid, out


def test_generate_large_image_writes_a_pyramidal_tiff(large_run):
    result, _, out = large_run
    assert result.path == out and result.image.shape == (128, 128, 3) and result.image.dtype == np.uint8
    assert result.guide_image.shape == (64, 64, 3) and result.latent.shape == (3, 32, 32)
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.shape == (128, 128, 3) and page.is_tiled
        np.testing.assert_array_equal(page.asarray(), result.image)
        x_res = page.tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(1e4 / 0.5)  # 0.5 µm/px at 20x, in px/cm
        assert read_provenance(out)["seed"] == 5  # provenance: XMP packet, see zoomldm.io.tiff
    record = json.loads(out.with_name("large.json").read_text())
    assert record["settings"]["guide"] == "10x" and record["settings"]["joint"]["inner_steps"] == 1
    for key in ("tiles", "output"):
        for name in ("psnr", "psnr_cubic"):
            assert 0 < record["metrics"][key][name] < 60
        for name in ("mae", "mae_cubic"):
            assert 0 <= record["metrics"][key][name] <= 255
    assert out.with_name("large_guide.png").is_file()
    # the streamed per-tile metric is the evaluation module's whole-image metric (area downsampling)
    whole = constraint_metrics(result.image, result.guide_image)
    assert result.metrics["output"]["psnr"] == pytest.approx(whole.psnr, rel=1e-9)
    assert result.metrics["output"]["mae"] == pytest.approx(whole.mae, rel=1e-9)
    assert not out.with_name(".large.tif.resume").exists()  # the resume state is removed when done


def test_resume_skips_finished_steps_and_gives_the_same_image(trained_vq_pipe, tmp_path, monkeypatch):
    grid = torch.randn(32, 2, 2, generator=torch.Generator().manual_seed(6))
    kwargs = dict(guide="10x", config=FAST, postprocess=PostprocessConfig(t0=50), seed=6, progress=False)
    uninterrupted = generate_large_image(trained_vq_pipe, grid, out=tmp_path / "a" / "large.png", **kwargs)
    out = tmp_path / "b" / "large.png"

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(joint_module, "postprocess_canvas", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_large_image(trained_vq_pipe, grid, out=out, **kwargs)
    # the joint stage's tiles are on its zarr canvas, its one block recorded as finished in its one step
    assert (out.parent / ".large.png.resume" / "joint.zarr" / "done" / "00000" / "0").is_file()
    assert not out.exists()
    monkeypatch.undo()
    resumed = generate_large_image(trained_vq_pipe, grid, out=out, **kwargs)
    assert resumed.metrics["unet_forwards"] == 0  # the joint stage was not run again
    assert uninterrupted.metrics["unet_forwards"] > 0
    np.testing.assert_array_equal(resumed.image, uninterrupted.image)


# ----------------------------------------------------------------------------------------------
# bad input: a clear error before any model work
# ----------------------------------------------------------------------------------------------
def _config_holder(preset: str) -> SimpleNamespace:
    cfg = ZoomLDMConfig.from_preset(preset)
    return SimpleNamespace(config=cfg, scales=cfg.scales)


def test_scale_pairs_of_the_published_presets():
    brca, naip = _config_holder("brca"), _config_holder("naip")
    for guide, k in (("10x", 2), ("5x", 4), ("2.5x", 8), ("1_25x", 16)):
        plan = plan_large_image(brca, guide)
        assert plan.k == k and plan.height == 256 * k and len(plan.tile_ids) == k * k
    assert plan_large_image(brca, size=4096).guide.name == "1.25x"
    assert plan_large_image(naip, "4x").k == 8  # NAIP 4x → 1x: 2048²
    assert plan_large_image(brca, "1.25x", target="5x").k == 4  # a cascade stage: 5x tiles under 1.25x
    with pytest.raises(ZoomLDMError, match="ratio of 32"):
        plan_large_image(brca, "0.625x")
    with pytest.raises(
        ZoomLDMError, match="'1.25x' is a pathology magnification, not a level of this satellite"
    ):
        plan_large_image(naip, "1.25x")
    with pytest.raises(ZoomLDMError, match="multiple of the 256-px tile"):
        plan_large_image(brca, "1.25x", size=4000)
    with pytest.raises(ZoomLDMError, match="does not match"):
        plan_large_image(brca, "1.25x", size=2048)
    with pytest.raises(ZoomLDMError, match="coarser"):
        plan_large_image(brca, "20x")
    with pytest.raises(ZoomLDMError, match="does not have"):
        plan_large_image(naip, size=256 * 16)
    with pytest.raises(ZoomLDMError, match="whole 256-px tiles"):
        plan_large_image(brca, "1.25x", region=(0, 0, 300, 256))
    with pytest.raises(ZoomLDMError, match="leaves"):
        plan_large_image(brca, "5x", region=(768, 0, 512, 256))
    assert plan_large_image(brca, "5x", region=(256, 512, 512, 256)).tile_ids == [9, 10]


def test_larger_ratios_cascade_two_scale_pairs():
    brca = _config_holder("brca")
    assert len(plan_stages(brca, "1.25x")) == 1
    first, second = plan_stages(brca, size=32768)  # 0.15625x → 1.25x → 20x
    assert (first.guide.name, first.target.name, first.k, first.height) == ("0.15625x", "1.25x", 8, 2048)
    assert (second.guide.name, second.target.name, second.k) == ("1.25x", "20x", 16)
    assert second.height == 32768 and len(second.tile_ids) == 128 * 128
    view = plan_stages(brca, "0.625x", region=(4096, 0, 1024, 512))[-1]
    assert view.height == 512 and view.tile_ids == [16, 17, 18, 19, 48, 49, 50, 51]
    with pytest.raises(ZoomLDMError, match="does not match"):
        plan_stages(brca, "0.3125x", size=8192)


def test_cascade_end_to_end(trained_vq_pipe):
    # compat patches are 64² (k ≤ 4): a 2.5x guide for 20x runs 2.5x → 5x (4 tiles), then 5x → 20x under
    # the 128² 5x image (64 tiles) — a 512² output
    grid = torch.randn(32, 8, 8, generator=torch.Generator().manual_seed(4))
    result = generate_large_image(
        trained_vq_pipe,
        grid,
        guide="2.5x",
        config=JointSamplingConfig(t0=50, inner_steps=1),
        decode=DecodeConfig(window=16, stride=16),  # 64 windows, not the official stride's 841 (27 s)
        postprocess=False,
        seed=4,
        progress=False,
    )
    assert result.image.shape == (512, 512, 3) and result.latent.shape == (3, 128, 128)
    assert result.guide_image.shape == (128, 128, 3)  # the first stage's 5x image guides the second
    assert result.settings["guide"] == "2.5x" and [s["target"] for s in result.settings["cascade"]] == [
        "5x",
        "20x",
    ]
    assert result.metrics["stage1"]["unet_forwards"] == 2 + 4 * 2 * 3
    assert result.metrics["unet_forwards"] == 64 * 2 * 3 and np.isfinite(result.metrics["output"]["psnr"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(reference=torch.zeros(32, 4, 4), guide="10x"), r"covers 2×2 base tiles.*4×4.*5x guide"),
        (dict(reference=torch.zeros(32, 32, 32), guide="0.625x"), "ratio of 8"),
        (dict(reference=torch.zeros(16, 2, 2), guide="10x"), "32"),
        (dict(reference=torch.zeros(32, 2, 2), size=100), "multiple"),
        (dict(reference=torch.zeros(32, 2, 2), guide="10x", out="x.jpg"), r"\.tif"),
        (dict(reference=None, guide="10x"), "needs a CDM|need a reference"),
        (
            dict(
                reference=torch.zeros(32, 2, 2),
                guide="10x",
                postprocess=PostprocessConfig(use_live_weights=True),
            ),
            "live_unet",
        ),
    ],
)
def test_bad_requests_fail_before_model_work(no_model_work, kwargs, message):
    reference = kwargs.pop("reference")
    with pytest.raises(ZoomLDMError, match=message):
        generate_large_image(no_model_work, reference, progress=False, **kwargs)
