"""Large images by joint multi-scale sampling (SPEC §4): the user-facing orchestrator.

:func:`generate_large_image` reads as the method's steps:

1. validate the request (scale pair, size, region, reference grid, output path) before any model work;
2. conditions — from a real region's unpooled SSL grid (per-tile contexts from each tile's own embeddings,
   the guide's from the pooled grid), or, without a reference, from the CDM (see below);
3. constrained sampling of the tiles under the guide (:mod:`.constrained`, SPEC §4.3);
4. seam removal (:mod:`.postprocess`, SPEC §4.5);
5. blended large decode streamed to a pyramidal TIFF or PNG (:mod:`.decode`, :mod:`.output`, SPEC §4.4),
   with the constraint metrics (PSNR / MAE between the downsampled output and the guide).

Viewport requests (``region=``) generate only the canvas blocks (the tile batches) under the region;
because every tile's noise is keyed by its index and every tile shares its batch with the same tiles, they
are bitwise the same tiles as in the full image (before post-processing, which mixes neighbours; same
device, dtype and tile batch).

The whole run is out of core: tile latents, post-processing and a cascade stage's output live in zarr
arrays in the state folder beside the output (``.<out>.resume/``, :mod:`.canvas`), one canvas block or a
few window rows in memory at a time; an interrupted run resumes from its last finished block, and the
blocks of each step are sharded over the processes of a multi-GPU launch (:mod:`.distributed`).

**Reference-free extension** (no source gives it; SPEC §12 option ii): with ``reference=None`` and a CDM,
the CDM samples the guide's Summarizer tokens, the pipeline generates the guide patch from them, condition
inversion (SPEC §5.1) recovers a base grid from that patch, and the tiles are sampled under the generated
guide held fixed — i.e. super-resolution of a generated guide.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..io.grids import grid_digest
from ..scales import Magnification
from .blocks import block_cover, canvas_layout
from .canvas import TileCanvas, pixel_array
from .coarse import coarse_window_stride
from .coarse_bands import run_coarse_canvas
from .conditions import guide_context, tile_contexts
from .constrained import ConstrainedResult, JointSamplingConfig, resolve_tile_batch, sample_canvas
from .decode import DecodeConfig
from .distributed import barrier, ensure_process_group, rank_world
from .footprints import FixedGuide, SampledGuide
from .guide_sources import (
    _cdm_guide,
    check_reference,
    check_reference_grid,  # noqa: F401 - re-exported: its old home
)
from .inversion import InversionConfig
from .noise import keyed_normal
from .output import MAX_IN_MEMORY_PIXELS, RunState, check_output_path, to_uint8_image, write_canvas
from .postprocess import PostprocessConfig, postprocess_canvas
from .results import (
    LargeImageResult,
    _finite,
    _result_metrics,
    base_settings,
    finish_outputs,
    guide_for_result,
)
from .stages import (
    CoarseRequest,
    LargeImagePlan,
    _plan_pair,  # noqa: F401 - re-exported: its old home (superres, plan)
    _resolve_target,
    coarse_request,
    plan_large_image,
    plan_stages,
)

__all__ = [
    "JointSamplingConfig",
    "LargeImagePlan",
    "LargeImageResult",
    "generate_large_image",
    "plan_large_image",
    "plan_stages",
    "CoarseRequest",
    "coarse_request",
    "render_large",
]


#: windows per UNet call of the coarse canvas (a window row is cut in chunks of this many)
COARSE_WINDOW_BATCH = 8


def coarse_decode_config(pipe) -> DecodeConfig:
    """The coarse canvas' decode: the official one (:func:`default_decode_config`)."""
    return default_decode_config(pipe)


def default_decode_config(pipe) -> DecodeConfig:
    """The official decode (SPEC §4.4) in the model's units: windows of one latent tile (64), stride 1/4."""
    tile = pipe.config.latent_size
    return DecodeConfig(window=tile, stride=max(tile // 4, 1))


def _mpp_um(mag: Magnification) -> float:
    """µm per pixel for the TIFF resolution tags (satellite levels are in m/px)."""
    return mag.mpp * (1e6 if mag.domain == "satellite" else 1.0)


def render_large(
    pipe,
    plan: LargeImagePlan,
    *,
    base_grid: torch.Tensor,
    guide: SampledGuide | FixedGuide,
    config: JointSamplingConfig,
    postprocess: PostprocessConfig | None,
    decode: DecodeConfig | None,
    seed: int,
    out: Path | None,
    settings: dict[str, Any],
    state: RunState,
    stage: str = "",
    live_unet=None,
    keep_in_memory: bool | None = None,
    compression: str = "jpeg",
    guide_uint8: Any = None,
    keep_pixels: bool = False,
    progress: bool = True,
) -> LargeImageResult:
    """Steps 3–5 shared by joint sampling, super-resolution, cascades and the reference-free path: tile
    contexts from the canvas-wide ``base_grid``, constrained sampling, post-processing, decode and write
    (to ``out``, or only to memory when it is None). ``guide_uint8`` is the fixed guide as the user gave it
    (the metrics compare with it, not with a float round trip; a uint8 ``[H, W, 3]`` numpy or zarr array).
    ``state`` keeps the resumable canvas and steps under names prefixed by ``stage``. ``keep_pixels`` also
    writes the output into a uint8 zarr array in the stage's canvas group (``result.pixels``: a cascade
    stage's image, read per block footprint as the next stage's guide).

    Memory: the joint stage holds the blocks in flight (:func:`~.constrained.sample_canvas`),
    post-processing a few window rows of the canvas (:func:`~.postprocess.postprocess_canvas`) and the
    decode O(width) (:func:`~.output.write_canvas`); the latent is returned only for images
    ≤ ``MAX_IN_MEMORY_PIXELS``. In a multi-process launch every rank
    samples its share of the blocks and rank 0 post-processes, decodes and writes."""
    started = time.perf_counter()
    ensure_process_group(pipe.device)  # a multi-process launch: before the ranks share the state folder
    ids = plan.tile_ids
    P = pipe.config.latent_size
    channels = pipe.unet.config.in_channels
    seconds: dict[str, float] = {}

    # 3. constrained sampling of the whole canvas blocks under the request, so that each tile shares its
    #    batch with the same tiles as in the full image (bitwise the same tiles; see
    #    constrained.batch_rows); for a full image the cover is the request itself. The tiles live on a
    #    zarr canvas in the state folder (in memory without an output), resumable by block; contexts and
    #    noise are made block by block.
    tile_batch = resolve_tile_batch(pipe, config, plan.canvas_rows * plan.canvas_cols)
    config = dataclasses.replace(config, tile_batch=tile_batch)
    computed = block_cover(ids, plan.canvas_cols, plan.canvas_rows, tile_batch)
    layout = canvas_layout(pipe, plan.guide, plan.target, guide, tile_batch)
    canvas = TileCanvas.open(
        state.canvas_dir(f"{stage}joint"), layout, state.fingerprint, fresh=not state.resume
    )

    def contexts_of(block_ids: list[int]) -> torch.Tensor:
        return tile_contexts(pipe, base_grid, plan.target, block_ids, plan.canvas_cols)

    def noise_of(block_ids: list[int]) -> torch.Tensor:
        return keyed_normal((channels, P, P), seed, "tile_init", block_ids)

    result: ConstrainedResult = sample_canvas(
        pipe,
        plan.guide,
        canvas,
        computed,
        contexts_of,
        noise_of,
        guide,
        target_magnification=plan.target,
        config=config,
        seed=seed,
        progress=progress,
        label=f"{stage.rstrip('_')} joint sampling".strip(),
    )
    seconds["joint"] = time.perf_counter() - started
    view = canvas.view(result.final_buffer, plan.row0, plan.col0, plan.rows, plan.cols)
    small = plan.height * plan.width <= MAX_IN_MEMORY_PIXELS
    guide_u8 = guide_uint8 if guide_uint8 is not None else to_uint8_image(result.guide_image)
    rank, _ = rank_world()
    if rank != 0:  # post-processing, decode and the output file are rank 0's; wait for them
        barrier()
        pixels = canvas.root["pixels"] if keep_pixels else None
        metrics = _result_metrics(result, computed, {}, seconds)
        return LargeImageResult(None, None, guide_for_result(guide_u8), None, metrics, settings, pixels)
    canvas_latent: Any = view.to_tensor() if small else view

    # 4. post-processing (out of core: row bands of the zarr canvas into a zarr result; resumable per step)
    if postprocess is not None:
        t = time.perf_counter()
        canvas_latent = postprocess_canvas(
            pipe,
            view,
            plan.grid_crop(base_grid),
            target_magnification=plan.target,
            config=postprocess,
            seed=seed,
            unet=live_unet if postprocess.use_live_weights else None,
            folder=state.canvas_dir(f"{stage}post"),
            key=state.fingerprint,
            fresh=not state.resume,
            tile_origin=(plan.row0, plan.col0),
            tiles_per_row=plan.canvas_cols,
            progress=progress,
        )
        seconds["postprocess"] = time.perf_counter() - t

    # 5. decode (from the zarr canvas, window by window, unless post-processed in memory), write, measure
    t = time.perf_counter()
    metadata = dict(settings, tile_metrics=_finite(result.metrics))
    pixels = None
    if keep_pixels:
        pixels = pixel_array(canvas.root, "pixels", plan.height, plan.width, plan.tile_px * layout.bh)
    image, output_metrics = write_canvas(
        pipe,
        canvas_latent,
        out,
        k=plan.k,
        guide_image=guide_u8,
        origin=(plan.row0, plan.col0),
        mpp=_mpp_um(plan.target),
        metadata=metadata,
        decode=decode,
        keep_in_memory=keep_in_memory,
        compression=compression,
        pixels=pixels,
        progress=progress,
    )
    barrier()  # the other ranks wait for the output (a cascade stage's pixels feed the next stage)
    seconds["decode"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started
    metrics = _result_metrics(result, computed, output_metrics, seconds)
    latent = None
    if small:
        latent = canvas_latent if isinstance(canvas_latent, torch.Tensor) else canvas_latent.to_tensor()
    return LargeImageResult(image, out, guide_for_result(guide_u8), latent, metrics, settings, pixels)


def generate_large_image(
    pipe,
    reference: torch.Tensor | None = None,
    *,
    guide: str | int | Magnification | None = None,
    target: str | int | Magnification | None = None,
    size: int | None = None,
    region: tuple[int, int, int, int] | None = None,
    config: JointSamplingConfig | None = None,
    postprocess: PostprocessConfig | bool | None = True,
    decode: DecodeConfig | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    cdm=None,
    inversion: InversionConfig | None = None,
    guide_steps: int = 50,
    live_unet=None,
    keep_in_memory: bool | None = None,
    compression: str = "jpeg",
    resume: bool = True,
    progress: bool = True,
) -> LargeImageResult:
    """Generate a large image at ``target`` (default: the base level, 20x / 1x) jointly with a guide patch.

    Args:
        pipe: the :class:`~zoomldm.pipeline.ZoomLDMPipeline` (EMA UNet as loaded by default).
        reference: the unpooled SSL grid ``[C, n, n]`` of a real region at base resolution covering the
            guide's field of view (n = 16 for a 1.25x guide: a 4096² region at 20x). None: reference-free
            generation with ``cdm`` (see the module docstring).
        guide: guide magnification (``"1.25x"`` → k = 16 at 20x, ``"5x"`` → k = 4; NAIP ``"4x"`` → 1x, k = 8).
        target: magnification of the output (default: the base level).
        size: side of the output in pixels (must equal k × 256; with ``guide`` omitted it picks the guide).
            Ratios beyond 16 (e.g. a 0.15625x guide: 32768² at 20x) run as a cascade of two scale pairs
            (:func:`plan_stages`): the first stage's image at the intermediate level (1.25x) is the fixed
            guide of the second; ``<stem>_guide.png`` is then that image and ``<stem>_guide_top.png`` the
            first guide.
        region: ``(x, y, w, h)`` in output pixels (multiples of 256): generate only the tiles there.
        config: :class:`JointSamplingConfig` (official defaults).
        postprocess: :class:`~.postprocess.PostprocessConfig`; True = defaults; False/None = skip.
        decode: :class:`~.decode.DecodeConfig` (official defaults).
        seed: seed of every noise draw (per tile and step).
        out: ``.tif``/``.ome.tif`` (pyramidal, streamed) or ``.png``; also writes ``<stem>_guide.png`` and
            ``<stem>.json`` (metrics and settings) beside it. None: return the image only.
        cdm: a :class:`~zoomldm.models.cdm.ConditioningDiT` for reference-free generation.
        inversion: :class:`~.inversion.InversionConfig` (reference-free path only).
        guide_steps: PLMS steps of the CDM-conditioned guide patch (reference-free path only).
        live_unet: the live (non-EMA) UNet, needed only with ``postprocess.use_live_weights``.
        keep_in_memory: also return the image as an array (default: when ≤ 8192² pixels).
        compression: TIFF tile compression: ``"jpeg"`` (quality 90), ``"zlib"`` (lossless) or ``"none"``;
            a ``.ome.tif`` name writes OME-TIFF.
        resume: save the state after every step beside ``out`` and continue from it on a rerun.
        progress: progress bars.
    """
    # 1. validate everything before any model work
    config = config or JointSamplingConfig()
    post = PostprocessConfig() if postprocess is True else (postprocess or None)
    if post is not None and post.use_live_weights and live_unet is None:
        raise ConfigError("postprocess use_live_weights needs live_unet= (the checkpoint's live UNet)")
    coarse_req = None
    if guide is None and size is not None:  # past one guide patch: a coarse canvas first (.coarse)
        coarse_req = coarse_request(pipe, _resolve_target(pipe, target), size, region)
    stages = coarse_req.stages if coarse_req is not None else plan_stages(pipe, guide, target, size, region)
    plan = stages[-1]
    out = check_output_path(out, plan.height, plan.width, compression)
    grid = check_reference(pipe, reference, cdm, stages, coarse_req)  # None: reference-free (the CDM's)
    inversion = inversion or InversionConfig()
    decode = decode or default_decode_config(pipe)
    channels, P = pipe.unet.config.in_channels, pipe.config.latent_size
    parts: dict[str, Any] = dict(joint=config, postprocess=post, decode=decode)
    if len(stages) > 1:
        parts["cascade"] = [stage.describe() for stage in stages]
    if coarse_req is not None:
        parts["coarse"] = {
            "level": coarse_req.level.name,
            "rows": coarse_req.rows,
            "cols": coarse_req.cols,
            "window_stride": coarse_window_stride(pipe),
        }
    if reference is not None:
        parts["reference"] = {"kind": "ssl grid", "shape": list(grid.shape), "sha256_16": grid_digest(grid)}
    else:
        parts.update(inversion=inversion, reference={"kind": "cdm", "guide_steps": guide_steps})
    settings = base_settings(pipe, plan, seed, **parts)
    settings["guide"] = stages[0].guide.name
    state = RunState(out, settings, enabled=resume)
    common = dict(
        config=config,
        postprocess=post,
        decode=decode,
        seed=seed,
        settings=settings,
        state=state,
        live_unet=live_unet,
        progress=progress,
    )

    # 2. conditions of the (first) guide: the reference's pooled grid, a coarse canvas sampled under the
    #    reference (past one guide patch), or a CDM-generated guide patch
    coarse_pixels = None
    coarse_metrics = None
    if coarse_req is not None:  # out of core, resumable by band, sharded (.coarse_bands)
        ensure_process_group(pipe.device)
        coarse_run = run_coarse_canvas(
            pipe,
            coarse_req.level,
            grid,
            coarse_req.rows,
            coarse_req.cols,
            folder=state.canvas_dir("coarse"),
            fingerprint=state.fingerprint,
            fresh=not state.resume,
            seed=seed,
            config=config,
            window_batch=COARSE_WINDOW_BATCH,
            window_stride=coarse_window_stride(pipe),
            decode=coarse_decode_config(pipe),
            progress=progress,
        )
        coarse_pixels = coarse_run.pixels  # uint8 zarr, read per block footprint by the next stage
        coarse_metrics = {
            "unet_forwards": coarse_run.unet_rows,
            "window_rows": coarse_run.window_rows,
            "bands": coarse_run.bands,
            "seconds": coarse_run.seconds,
        }
        first_guide: SampledGuide | FixedGuide = FixedGuide(coarse_pixels)
    elif reference is not None:
        first_guide = SampledGuide(
            guide_context(pipe, grid, stages[0].guide),
            keyed_normal((channels, P, P), seed, "guide_init", [0]),
        )
    else:
        grid, guide_image = _cdm_guide(pipe, cdm, stages[0].guide, inversion, guide_steps, seed, progress)
        first_guide = FixedGuide(guide_image)

    # 3.–5. one scale pair; or a cascade whose first stage's image is the fixed guide of the second
    if len(stages) == 1:
        result = render_large(
            pipe,
            plan,
            base_grid=grid,
            guide=first_guide,
            out=out,
            keep_in_memory=keep_in_memory,
            compression=compression,
            guide_uint8=coarse_pixels,
            **common,
        )
        if coarse_metrics is not None:
            result.metrics["coarse"] = coarse_metrics
        return finish_outputs(result, state)
    coarse = render_large(
        pipe,
        stages[0],
        base_grid=grid,
        guide=first_guide,
        out=None,
        stage="stage1_",
        keep_pixels=True,
        guide_uint8=coarse_pixels,
        **common,
    )
    result = render_large(  # the first stage's image, on disk beside the output, guides the second
        pipe,
        plan,
        base_grid=grid,
        guide=FixedGuide(coarse.pixels),
        out=out,
        keep_in_memory=keep_in_memory,
        compression=compression,
        guide_uint8=coarse.pixels,
        **common,
    )
    result.metrics["stage1"] = coarse.metrics
    if coarse_metrics is not None:
        result.metrics["coarse"] = coarse_metrics
    return finish_outputs(result, state, {"guide_top": coarse.guide_image})
