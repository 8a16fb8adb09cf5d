"""The plan before the work (``zoomldm generate/superres --dry-run``, :mod:`zoomldm.sampling.plan`): exact
counts against real runs, memory that does not grow with the image, refusals before any model work."""

from __future__ import annotations

import re

import numpy as np
import pytest

from _fixtures import run_cli
from zoomldm.errors import ConfigError, ZoomLDMError
from zoomldm.sampling import plan as plan_module
from zoomldm.sampling.plan import format_bytes, plan_large

#: few steps: the counts scale with them, the check is that every term of the formula is right
SHORT = dict(stride=500, inner_steps=2, no_postprocess=True)


@pytest.fixture
def model_args(small_checkpoint, small_config):
    return ["--checkpoint", str(small_checkpoint), "--config", str(small_config)]


def _grid(pipe, side: int):
    import torch

    return torch.from_numpy(
        np.random.default_rng(0).standard_normal((pipe.config.ssl_channels, side, side))
    ).float()


@pytest.mark.parametrize(
    "request_",
    [
        dict(guide="10x", size=128),  # sampled guide, 4 tiles in one block
        dict(guide="5x", size=256, region=(0, 0, 64, 64), tile_batch=4),  # a viewport: its block only
        dict(guide="10x", size=128, guidance_w=0.0),  # no guidance: one UNet row per ε
    ],
)
def test_counts_equal_the_metrics_of_a_real_run(compat_pipe, request_):
    """UNet rows and VQ passes of the plan are those the sampler counts (``metrics``)."""
    side = compat_pipe.magnification(request_["guide"]).grid_size
    result = compat_pipe.generate_large(
        reference=_grid(compat_pipe, side), progress=False, **SHORT, **request_
    )
    plan = plan_large(compat_pipe, calibrate=False, **SHORT, **request_)
    (stage,) = plan.stages
    assert stage.unet_rows == result.metrics["unet_forwards"]
    assert stage.vq_passes == result.metrics["vq_passes"]
    assert stage.tiles == result.metrics["computed_tiles"]


def test_reference_free_counts_equal_the_metrics(compat_pipe):
    """With a CDM the guide is generated, then held fixed: no guide rows per step."""
    from zoomldm.models.cdm import ConditioningDiT

    cdm = ConditioningDiT(token_dim=compat_pipe.config.context_dim, depth=1, hidden_size=32, num_heads=2)
    short = dict(guide="10x", inversion_steps=1, **SHORT)
    result = compat_pipe.generate_large(cdm=cdm, progress=False, **short)
    (stage,) = plan_large(compat_pipe, reference_free=True, calibrate=False, **short).stages
    assert stage.guide_kind == "fixed image"
    assert (stage.unet_rows, stage.vq_passes) == (
        result.metrics["unet_forwards"],
        result.metrics["vq_passes"],
    )


def test_superres_counts_equal_the_metrics(compat_pipe):
    lr = np.random.default_rng(1).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    result = compat_pipe.super_resolve(lr, "10x", inversion_steps=1, progress=False, **SHORT)
    plan = compat_pipe.plan_large(  # the pipeline's face of plan_large
        "superres",
        input_shape=lr.shape[:2],
        from_magnification="10x",
        inversion_steps=1,
        calibrate=False,
        **SHORT,
    )
    (stage,) = plan.stages
    assert stage.guide_kind == "fixed image" and stage.inversion_patches == 2
    assert (stage.unet_rows, stage.vq_passes) == (
        result.metrics["unet_forwards"],
        result.metrics["vq_passes"],
    )


@pytest.mark.parametrize("preset", ["tiny", "brca"])
@pytest.mark.parametrize("how", ["generate", "superres"])
def test_peak_host_memory_of_131072_is_within_2x_of_8192(preset, how, tmp_path):
    """A 131072² output (256× the pixels) plans at most twice the peak host memory of an 8192² one: the
    memory is bounded by the block, the batch, O(width) bands and the small coarse canvas, not by the
    image. ``generate --size 131072`` (a coarse canvas of patches at the coarsest level, then the
    cascade) and super-resolution of an 8192² 1.25x image both reach that size."""
    small = plan_large(preset, size=8192, out=tmp_path / "a.tif", calibrate=False)
    if how == "generate":
        large = plan_large(preset, size=131072, out=tmp_path / "b.tif", calibrate=False)
    else:
        large = plan_large(
            preset,
            command="superres",
            input_shape=(8192, 8192),
            from_magnification="1.25x",
            out=tmp_path / "b.tif",
            calibrate=False,
        )
    assert (large.width, small.width) == (131072, 8192)
    assert large.peak_host_bytes <= 2 * small.peak_host_bytes, (large.lines(), small.lines())
    assert large.disk_bytes > 50 * small.disk_bytes  # the disk, not the memory, grows with the image
    assert large.bigtiff and not small.bigtiff


def test_generate_past_one_guide_patch_plans_a_coarse_canvas(tmp_path):
    """131072² at 20x with the brca model is 1024² at 0.15625x: a coarse canvas of 4 × 4 patches (169
    sliding windows at stride ¼ patch, 20 steps, 2 UNet rows each), decoded, then the cascade 0.15625x → 1.25x → 20x with
    that canvas as the fixed guide of its first stage."""
    plan = plan_large("brca", size=131072, out=tmp_path / "x.tif", calibrate=False)
    coarse, first, second = plan.stages
    assert (coarse.name, coarse.target, coarse.tiles, coarse.blocks) == ("coarse canvas", "0.15625x", 16, 169)
    assert (coarse.width, coarse.unet_rows, coarse.decode_windows) == (1024, 169 * 20 * 2, 13 * 13)
    assert (first.guide, first.target, first.width, first.guide_kind) == (
        "0.15625x",
        "1.25x",
        8192,
        "fixed image",
    )
    assert (second.target, second.width) == ("20x", 131072)
    assert plan.unet_rows == sum(s.unet_rows + s.post_unet_rows for s in plan.stages)
    text = "\n".join(plan.lines())
    assert "scale cascade: noise → 0.15625x → 1.25x → 20x" in text
    assert "coarse canvas: 0.15625x, 1024×1024 px = 16 patches" in text
    # the reference grid covers the whole request (512² base tiles of 1024 channels, 1 GiB) and stays in its
    # file: the largest read is one coarse window's 128² base tiles
    grid = next(t for t in plan.host_terms if t.name == "SSL grid of the request")
    assert grid.bytes == 1024 * 128 * 128 * 4 and "read by block" in grid.note
    # the decoded canvas (1024²) guides stage 1 from disk; stage 2's guide (8192²) is not returned whole
    guide = next(t for t in plan.host_terms if t.name == "guide image returned")
    assert guide.bytes == 0
    disk = next(t for t in plan.disk_terms if t.name == "coarse canvas")
    L, D = 64, 512  # brca: 64² latent tiles, 512-wide contexts
    assert disk.bytes == 2 * 3 * (4 * L) ** 2 * 4 + 169 * 65 * D * 4 + 1024 * 1024 * 3
    from zoomldm.sampling.coarse import coarse_canvas_cost

    cfg = plan_module.model_spec("brca").config
    cost = coarse_canvas_cost(plan_module._ConfigPipe(cfg), 4, 4, level=coarse_level_of(cfg))
    # O(width) buffers: 14 bands of 3 × 64 × 256 latents, two window rows of 13 contexts, one window's grid read
    assert cost.buffers_mib * 2**20 == 14 * 3 * 64 * 256 * 4 + 2 * 13 * 65 * D * 4 + 1024 * 128 * 128 * 4


def coarse_level_of(cfg):
    pipe = plan_module._ConfigPipe(cfg)
    return pipe.scales[-1]


def test_coarse_canvas_needs_a_reference_and_whole_patches():
    with pytest.raises(ConfigError, match="sizes above 32768 px need --reference") as err:
        plan_large("brca", size=131072, reference_free=True, calibrate=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="whole number of them") as err:
        plan_large("brca", size=32768 + 256, calibrate=False)
    assert "\n" not in str(err.value)


def test_planned_window_batch_is_the_samplers_default():
    import inspect

    from zoomldm.sampling.coarse import generate_coarse_canvas

    default = inspect.signature(generate_coarse_canvas).parameters["window_batch"].default
    assert plan_module.COARSE_WINDOW_BATCH == default


def test_every_term_is_printed_and_the_total_is_their_sum(tmp_path):
    plan = plan_large("brca", size=32768, out=tmp_path / "x.tif", device="cpu", calibrate=False)
    text = "\n".join(plan.lines())
    assert re.search(r"^peak host memory: [0-9.]+ (MiB|GiB|TiB)$", text, re.M), text
    for line in (
        "canvas disk:",
        "estimated time:",
        "scale cascade: 0.15625x → 1.25x → 20x",
        "process baseline",
    ):
        assert line in text
    assert plan.peak_host_bytes == sum(t.bytes for t in plan.host_terms)
    assert plan.disk_bytes == sum(t.bytes for t in plan.disk_terms)
    assert [s.k for s in plan.stages] == [8, 16] and plan.stages[1].tiles == 128 * 128
    assert plan.to_dict()["host_terms"][0]["name"] == "process baseline"


def test_gpu_terms_and_refusal(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_module, "available_gpu_bytes", lambda device: 2**30)
    plan = plan_large("brca", size=4096, out=tmp_path / "x.tif", device="cuda", calibrate=False)
    assert plan.peak_gpu_bytes > 2**30  # fp32 weights alone are 1.8 GiB
    assert "peak GPU memory:" in "\n".join(plan.lines())
    with pytest.raises(ZoomLDMError, match=r"not enough GPU memory .*short by") as err:
        plan.check()
    assert "\n" not in str(err.value)


def test_dry_run_prints_the_plan_and_loads_no_weights(model_args, tmp_path, capsys, monkeypatch):
    from zoomldm import ZoomLDMPipeline

    def forbidden(*args, **kwargs):
        raise AssertionError("--dry-run loaded the model")

    monkeypatch.setattr(ZoomLDMPipeline, "from_pretrained", forbidden)
    monkeypatch.setattr(ZoomLDMPipeline, "from_official", forbidden)
    out = tmp_path / "large.tif"
    code, stdout, err = run_cli(
        ["generate", *model_args, "--guide", "5x", "--out", str(out), "--dry-run", "--device", "cpu"], capsys
    )
    assert code == 0, err
    assert re.search(r"^peak host memory: [0-9.]+ [KMGT]?i?B$", stdout, re.M), stdout
    assert "canvas disk:" in stdout and "estimated time:" in stdout and "UNet rows" in stdout
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("probe", "what"),
    [("available_disk_bytes", "disk"), ("available_host_bytes", "host memory")],
)
def test_refused_up_front_when_disk_or_memory_is_short(
    model_args, tmp_path, capsys, monkeypatch, probe, what
):
    """Without --dry-run too: exit 2, one line saying what is short and by how much, before the model loads."""
    from zoomldm import ZoomLDMPipeline

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was loaded before the plan was checked")

    monkeypatch.setattr(ZoomLDMPipeline, "from_pretrained", forbidden)
    monkeypatch.setattr(plan_module, probe, lambda *args: 1024)
    grid = tmp_path / "grid.npy"
    np.save(grid, np.zeros((32, 2, 2), np.float32))
    code, stdout, err = run_cli(
        [
            "generate",
            *model_args,
            "--reference",
            str(grid),
            "--guide",
            "10x",
            "--out",
            str(tmp_path / "o.tif"),
        ],
        capsys,
    )
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"not enough {what}" in lines[0] and "short by" in lines[0], err
    if what == "disk":
        assert "1 KiB available" in lines[0]


def test_superres_dry_run_reads_only_the_input(model_args, data_dir, tmp_path, capsys):
    code, stdout, err = run_cli(
        [
            "superres",
            str(data_dir / "lr.jpg"),
            "--from",
            "10x",
            "--resize",
            "128",
            *model_args,
            "--dry-run",
            "--out",
            str(tmp_path / "sr.tif"),
            "--device",
            "cpu",
        ],  # fmt: skip
        capsys,
    )
    assert code == 0, err
    assert "condition inversion: 4 patches" in stdout and "256×256 px" in stdout


def test_format_bytes():
    assert format_bytes(3.1 * 2**30) == "3.1 GiB" and format_bytes(512) == "512 B"


def test_a_generated_tiff_is_20x_at_half_a_micron_and_opens_in_the_viewer(compat_pipe, tmp_path):
    """The output's resolution tags carry the target level's µm/px (0.5 at 20x); OpenSlide and
    ``zoomldm view`` (io.viewer.serve) read it."""
    import urllib.request

    openslide = pytest.importorskip("openslide")
    from zoomldm.viewer import serve

    out = tmp_path / "g.tif"
    compat_pipe.generate_large(reference=_grid(compat_pipe, 2), guide="10x", out=out, progress=False, **SHORT)
    with openslide.OpenSlide(str(out)) as slide:
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    with serve(out, port=0) as server:
        with urllib.request.urlopen(server.url + "info.json", timeout=30) as response:
            assert b'"mpp": 0.5' in response.read()


def test_cuda_time_says_assumed_until_the_gpu_rows_are_measured(monkeypatch):
    """The CUDA estimate uses the assumed share of the matmul rate and says so, until a measured GPU row
    (benchmarks/RESULTS.md, gpu_check.sh gigapixel) is entered in MEASURED_GPU_UTILISATION."""
    from zoomldm.sampling.plan import timing

    monkeypatch.setattr(timing, "matmul_rate", lambda device, dtype: 500e12)
    monkeypatch.setattr(timing, "_device_name", lambda device: "NVIDIA H100 80GB HBM3")
    stage = plan_module.StagePlan(
        "s", "1.25x", "20x", 16, 4096, 4096, 256, (4, 4), 16, 16, 20, 10, 20, "x", 0, 0
    )
    stage.flops = 1e15
    seconds, source = timing._estimate_time([stage], "cuda", "bfloat16", True)
    assert "assumed" in source and seconds == pytest.approx(1e15 / (500e12 * 0.35))
    monkeypatch.setattr(timing, "MEASURED_GPU_UTILISATION", {"H100": (0.5, "measured: RESULTS.md, test")})
    seconds, source = timing._estimate_time([stage], "cuda", "bfloat16", True)
    assert "measured" in source and "assumed" not in source and seconds == pytest.approx(1e15 / 250e12)
    assert timing.utilisation("cpu")[1].startswith("measured")


def test_a_refusal_names_the_largest_term_and_the_option_that_shrinks_it(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_module, "available_host_bytes", lambda: 2**20)
    plan = plan_large("brca", size=4096, out=tmp_path / "x.tif", calibrate=False, tile_batch=64)
    (line,) = plan.shortfalls
    assert "not enough host memory" in line and "largest term is 'sampling: one block in flight'" in line
    assert "lower --tile-batch (tiles per block, 64 now)" in line
    monkeypatch.setattr(plan_module, "available_disk_bytes", lambda folder: 2**20)
    plan = plan_large("brca", size=131072, out=tmp_path / "x.tif", calibrate=False)
    disk = next(line for line in plan.shortfalls if "not enough disk" in line)
    assert "largest term is 'post-processing sums + counts'" in disk and "--no-postprocess" in disk
    assert f"under {tmp_path}" in disk and "--out to a larger disk" in disk


def test_compat_model_plans_131072_within_2x_of_8192(compat_dir, tmp_path):
    """The small test model's 64² patches reach 1.25x in two scale pairs: 131072² is a 128 × 128-patch
    coarse canvas (259,081 windows) whose buffers are one window row and its bands — the plan stays within
    2× of 8192² (a 8 × 8 canvas), every term named."""
    compat = dict(
        model=str(compat_dir / "small_checkpoint.ckpt"), config=str(compat_dir / "small_config.yaml")
    )
    small = plan_large(size=8192, out=tmp_path / "a.tif", calibrate=False, **compat)
    large = plan_large(size=131072, out=tmp_path / "b.tif", calibrate=False, **compat)
    assert [s.name for s in large.stages][0] == "coarse canvas" and large.stages[0].tiles == 128 * 128
    assert large.peak_host_bytes <= 2 * small.peak_host_bytes, (large.lines(), small.lines())
    assert all(t.name for t in large.host_terms + large.disk_terms)
    assert any(t.name == "coarse canvas" and t.bytes > 4 * 2**30 for t in large.disk_terms)
