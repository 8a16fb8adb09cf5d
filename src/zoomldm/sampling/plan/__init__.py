"""The plan before the work: what a large-image run will compute, hold and write (``--dry-run``).

:func:`plan_large` takes the request of ``zoomldm generate`` / ``zoomldm superres`` (or
:meth:`ZoomLDMPipeline.generate_large` / ``.super_resolve``) and returns a :class:`RunPlan`: the scale
cascade, tiles and canvas blocks, UNet rows and VQ passes per stage, the disk the run needs, the peak host
and GPU memory term by term, and an estimated time on the device. It loads no weights and runs no network:
the model is read from its configuration only (a checkpoint's ``zoomldm.json`` or yaml; an official file
without a yaml is the one case whose tensors are read, to recognise the architecture), parameters are
counted on PyTorch's ``meta`` device, and activation memory and FLOPs come from one forward pass of each
network on ``meta`` tensors (shapes only, no arithmetic) under a dispatch mode that records every
allocation and its release (:func:`activation_profile`).

The package, one module per responsibility (imported in this order, each only from the ones before it):
:mod:`.model` (the model from its configuration), :mod:`.profile` (activations and FLOPs, traced on
``meta``), :mod:`.stages` (each stage's work), :mod:`.geometry` (the request's cascade),
:mod:`.probes` (what the machine has now), :mod:`.resources` (host, GPU and disk terms), :mod:`.advice`
(the term and option a refusal names), :mod:`.timing`
(the time estimate), :mod:`.report` (:class:`RunPlan` and its lines); :func:`plan_large`, here, puts
them together and decides the up-front refusal.

**The memory model** is the out-of-core contract of the large-image engine (docs/large_images.md,
"Out-of-core canvas, resume and many GPUs"): the tile latents (double-buffered), a fixed guide's pixels,
the post-processing sums and counts and each cascade stage's output live in a zarr group beside the output
(``.<out>.resume/``); one canvas block (``block_shape(tile_batch)`` tiles) is in memory at a time; the decode
holds one band of window rows and the TIFF writer one row of tiles, both O(width). Every term is computed in
:func:`_host_terms`, :func:`_gpu_terms` and :func:`_disk_terms` and printed by name, so a term that turns
out wrong in a measurement can be found and corrected in one place.

**Counts** are exact for the sampler in :mod:`.constrained` / :mod:`.newton` (tested against
``metrics["unet_forwards"]`` and ``metrics["vq_passes"]`` of real runs): per outer step each tile costs
``(1 + 2·inner)`` guided ε evaluations (2 UNet rows each when ``w > 0``) and ``3·inner`` VQ images (one
decode, two encodes); a sampled guide adds one guided ε and one decode per step and one final decode; the
constraint metrics decode every tile once more.

**Time** is FLOPs ÷ an effective rate: the FLOPs of one UNet row and one VQ image are counted on ``meta``
(``torch.utils.flop_counter``), the device's dense matmul rate is measured in a short calibration
(~0.2 s, random matrices, no model), and the share of that rate the sampler reaches is
:data:`UTILISATION` (CPU: measured, benchmarks/RESULTS.md "Large images" CPU rows; CUDA: an assumption
until the ``gigapixel`` rows of ``benchmarks/gpu_check.sh`` are recorded). The output says which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError
from .advice import shrink_advice
from .geometry import (  # noqa: F401
    _coarse_of,
    _geometry,
    final_target,
    guide_for_reference,
    plan_geometry,
)
from .model import ModelSpec, _ConfigPipe, model_spec  # noqa: F401
from .probes import (  # noqa: F401
    _measured_newton_bytes,
    available_disk_bytes,
    available_gpu_bytes,
    available_host_bytes,
    process_rss_bytes,
)
from .profile import ACTIVATION_MARGIN, activation_profile  # noqa: F401
from .report import RunPlan
from .resources import (  # noqa: F401
    DECODE_BAND_COPIES,
    F32,
    LATENT_COPIES,
    METRIC_BYTES_PER_VALUE,
    PIXEL_COPIES,
    TIFF_BAND_COPIES,
    Term,
    _disk_terms,
    _gpu_terms,
    _host_terms,
    _peak,
    format_bytes,
)
from .stages import (  # noqa: F401
    COARSE_KIND,
    COARSE_WINDOW_BATCH,
    REFERENCE_FREE_GUIDE_STEPS,
    StagePlan,
    _coarse_stage_plan,
    _stage_plan,
)
from .timing import UTILISATION, _estimate_time, matmul_rate  # noqa: F401

__all__ = [
    "ModelSpec",
    "RunPlan",
    "StagePlan",
    "Term",
    "activation_profile",
    "available_disk_bytes",
    "available_gpu_bytes",
    "available_host_bytes",
    "format_bytes",
    "model_spec",
    "plan_large",
    "process_rss_bytes",
]


def plan_large(
    model: Any = None,
    *,
    command: str = "generate",
    guide: Any = None,
    target: Any = None,
    size: int | None = None,
    region: tuple[int, int, int, int] | None = None,
    input_shape: tuple[int, int] | None = None,
    from_magnification: Any = None,
    out: str | Path | None = None,
    config: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    live_weights: bool = False,
    compression: str = "jpeg",
    schedule: str = "official",
    reference_free: bool = False,
    calibrate: bool = True,
    trace: bool = True,
    **options: Any,
) -> RunPlan:
    """Plan a ``generate`` (``command="generate"``: ``guide``/``target``/``size``/``region`` as
    :meth:`~zoomldm.pipeline.ZoomLDMPipeline.generate_large`) or ``superres`` run (``input_shape`` =
    ``(H, W)`` of the low-resolution image at ``from_magnification``) without doing it.

    Args:
        model: pipeline, config, preset name or checkpoint (:func:`model_spec`); ``config`` as ``--config``.
        out: the output file (its folder's free space is checked; None: in memory).
        device, dtype: where and how the run would go (``"cuda"`` adds the GPU terms and free-memory check;
            default: the pipeline's, else ``"cpu"`` / ``"float32"``).
        live_weights: a second UNet is loaded for post-processing (``post_live_weights``).
        schedule: ``official`` or ``fast`` (:data:`zoomldm.sampling.settings.SCHEDULES`), then ``options``
            by CLI name on top (``inner_steps=…``, ``tile_batch=…``, …) as the pipeline methods take them.
        reference_free: the guide comes from the CDM: its guide patch's PLMS steps and condition inversion
            are added, the guide is then fixed (the CDM's own cost, a small DiT, is not counted).
        calibrate: measure the device's matmul rate for the time estimate (False: 0 s, "not estimated").
        trace: trace the networks on ``meta`` for activation memory and FLOPs. False (the check before a
            real run: no network is called before the inputs are validated) leaves activations out, so the
            memory figures are lower bounds and the time is not estimated.

    Returns:
        :class:`RunPlan`; :meth:`RunPlan.check` raises when disk or memory would not suffice.
    """
    from ...io.tiff import estimated_tiff_bytes, needs_bigtiff
    from ..output import MAX_IN_MEMORY_PIXELS, check_output_path
    from ..settings import large_image_settings, schedule_options

    spec = model_spec(model, config)
    cfg = spec.config
    pipe = _ConfigPipe(cfg)
    is_pipeline = hasattr(model, "unet") and hasattr(model, "device")
    device = device or (str(model.device) if is_pipeline else "cpu")
    dtype = dtype or (str(model.dtype).removeprefix("torch.") if is_pipeline else "float32")
    if command not in ("generate", "superres"):
        raise ConfigError(f"command must be generate or superres; got {command!r}")
    sr = command == "superres"
    if sr:
        from ..superres import SRConfig

        sampling_cls = SRConfig
    else:
        from ..newton import JointSamplingConfig as sampling_cls  # type: ignore[assignment]
    options = dict(schedule_options(schedule, sr), **options)
    if options.get("tile_batch") == "auto":  # measured on the device at run time; the plan takes 16
        options["tile_batch"] = 16
    settings = large_image_settings(pipe, sampling_cls=sampling_cls, **options)
    coarse = _coarse_of(pipe, sr, guide, target, size, region)
    if coarse is not None and reference_free:
        span = coarse.level.downsample // final_target(coarse).downsample * pipe.config.image_size
        raise ConfigError(
            f"sizes above {span} px need --reference (the coarse canvas past one {coarse.level} guide patch "
            "is conditioned on the reference grid; the CDM makes one guide patch)"
        )
    if coarse is not None:
        stages = coarse.stages
    else:
        stages = _geometry(pipe, sr, guide, target, size, region, input_shape, from_magnification)
    final = stages[-1]
    out_path = check_output_path(out, final.height, final.width, compression)
    is_tiff = out_path is not None and out_path.suffix.lower() in (".tif", ".tiff")

    if trace:
        profile = activation_profile(cfg, dtype, dtype if device.startswith("cuda") else "float32")
    else:
        profile = {name: (0.0, 0.0) for name in ("unet", "decode", "encode")}
        profile.update(unet_flops=0.0, decode_flops=0.0, encode_flops=0.0)
        calibrate = False
    stage_plans = [
        _stage_plan(pipe, i, len(stages), geo, settings, sr, profile, reference_free, coarse is not None)
        for i, geo in enumerate(stages)
    ]
    if coarse is not None:
        stage_plans.insert(0, _coarse_stage_plan(pipe, coarse, settings, profile))
    on_gpu = device.startswith("cuda")
    kept = final.height * final.width <= MAX_IN_MEMORY_PIXELS or out_path is None or not is_tiff
    output_bytes = (
        estimated_tiff_bytes(final.height, final.width, compression)
        if is_tiff
        else (final.height * final.width * 3 if out_path is not None else 0)
    )
    host = _host_terms(
        spec,
        cfg,
        stages,
        stage_plans,
        settings,
        profile,
        dtype,
        on_gpu,
        kept,
        sr,
        input_shape,
        is_tiff,
        live_weights,
        weights_resident=is_pipeline and not on_gpu,
        coarse=coarse,
    )
    measured = (
        _measured_newton_bytes(model, max(p.tile_batch for p in stage_plans)) if on_gpu and trace else None
    )
    gpu = (
        _gpu_terms(spec, cfg, stage_plans, settings, profile, dtype, live_weights, measured) if on_gpu else []
    )
    disk = _disk_terms(cfg, stages, settings, output_bytes, is_tiff, final, sr, coarse)
    peak_host = _peak(host)
    peak_gpu = _peak(gpu) if on_gpu else None
    disk_bytes = sum(t.bytes for t in disk)
    seconds, source = _estimate_time(stage_plans, device, dtype, calibrate)

    avail = {
        "host memory": available_host_bytes(),
        "disk": available_disk_bytes(out_path.parent) if out_path is not None else None,
        "GPU memory": available_gpu_bytes(device) if on_gpu else None,
    }
    if avail["GPU memory"] is not None and is_pipeline:  # its weights are already there, and in the plan
        import torch

        avail["GPU memory"] += torch.cuda.memory_allocated(torch.device(device))
    short = []
    where = f" under {out_path.parent}" if out_path is not None else ""
    resident = host[0].bytes  # the baseline is this process, already resident: only the rest is new
    for what, need, have, terms in (
        ("disk", disk_bytes, avail["disk"], disk),
        (
            "host memory",
            peak_host,
            None if avail["host memory"] is None else avail["host memory"] + resident,
            host[1:],  # the baseline is not a term the run can shrink
        ),
        ("GPU memory", peak_gpu, avail["GPU memory"], gpu),
    ):
        if need is not None and have is not None and need > have:
            short.append(
                f"not enough {what} for this run: needs {'' if trace else 'at least '}{format_bytes(need)}, "
                f"{format_bytes(have)} available (short by {format_bytes(need - have)}); "
                f"{shrink_advice(what, terms, settings, where)}"
            )
    return RunPlan(
        command=command,
        model=spec.source,
        device=device,
        dtype=dtype,
        schedule=schedule,
        output=None if out_path is None else str(out_path),
        width=final.width,
        height=final.height,
        stages=stage_plans,
        host_terms=host,
        gpu_terms=gpu,
        disk_terms=disk,
        peak_host_bytes=peak_host,
        peak_gpu_bytes=peak_gpu,
        disk_bytes=disk_bytes,
        output_bytes=output_bytes,
        bigtiff=needs_bigtiff(final.height, final.width) if is_tiff else None,
        seconds=seconds,
        time_source=source,
        available=avail,
        shortfalls=short,
    )
