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
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..models.cdm import check_cdm_fits
from ..scales import Magnification
from .canvas import TileCanvas, pixel_array
from .coarse import (
    check_coarse_grid,
    coarse_canvas_needed,
    coarse_window_stride,
    decode_coarse_canvas,
    generate_coarse_canvas,
)
from .conditions import guide_context, tile_contexts
from .constrained import (
    MIN_FOOTPRINT,
    ConstrainedResult,
    FixedGuide,
    JointSamplingConfig,
    SampledGuide,
    block_cover,
    canvas_layout,
    resolve_tile_batch,
    sample_canvas,
    scale_ratio,
)
from .decode import DecodeConfig
from .distributed import barrier, ensure_process_group, rank_world
from .inversion import InversionConfig, invert_conditions
from .levels import parse_level, require_level
from .noise import generator_for, keyed_normal
from .output import MAX_IN_MEMORY_PIXELS, RunState, check_output_path, to_uint8_image, write_canvas
from .postprocess import PostprocessConfig, postprocess_canvas

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


@dataclass
class LargeImageResult:
    """Output of :func:`generate_large_image` / :func:`~zoomldm.sampling.superres.super_resolve`.

    Attributes:
        image: uint8 ``[H, W, 3]`` (None for outputs too large to keep in memory; see ``path``).
        path: the written PNG / pyramidal TIFF (None when no ``out`` was given).
        guide_image: uint8 guide (joint sampling) or low-resolution input (super-resolution).
        latent: final latent canvas ``[C, H/f, W/f]`` (CPU); None above ``MAX_IN_MEMORY_PIXELS`` (the
            canvas then lives only in the run's state folder until the output is complete).
        metrics: ``tiles`` (each tile's own decode before post-processing) and ``output`` (the final image)
            as ``{"psnr", "mae"}`` against the guide after downsampling; UNet rows and VQ passes; seconds.
        settings: every setting, the seed and the model provenance (also stored in the file).
        pixels: the image as a uint8 zarr array in the run's state (cascade stages only), else None.
    """

    image: np.ndarray | None
    path: Path | None
    guide_image: np.ndarray
    latent: torch.Tensor | None
    metrics: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    pixels: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class LargeImagePlan:
    """Validated geometry: the scale pair, the tile canvas under the guide and the requested region."""

    guide: Magnification
    target: Magnification
    k: int
    tile_px: int
    canvas_rows: int  # tiles under the whole guide
    canvas_cols: int
    row0: int = 0  # requested region, in tiles
    col0: int = 0
    rows: int = 0
    cols: int = 0

    @property
    def tile_ids(self) -> list[int]:
        return [
            (self.row0 + r) * self.canvas_cols + self.col0 + c
            for r in range(self.rows)
            for c in range(self.cols)
        ]

    @property
    def height(self) -> int:
        return self.rows * self.tile_px

    @property
    def width(self) -> int:
        return self.cols * self.tile_px

    def grid_crop(self, base_grid: torch.Tensor) -> torch.Tensor:
        """The part of a canvas-wide base grid under the region."""
        g = self.target.grid_size
        return base_grid[
            :, self.row0 * g : (self.row0 + self.rows) * g, self.col0 * g : (self.col0 + self.cols) * g
        ]

    def describe(self) -> dict[str, Any]:
        return {
            "guide": self.guide.name,
            "target": self.target.name,
            "k": self.k,
            "size": [self.canvas_rows * self.tile_px, self.canvas_cols * self.tile_px],
            "region_px": [self.col0 * self.tile_px, self.row0 * self.tile_px, self.width, self.height],
        }


def _resolve_target(pipe, target) -> Magnification:
    return parse_level(pipe, target, "target magnification") if target is not None else pipe.scales[0]


def _resolve_levels(pipe, guide, target, size) -> tuple[Magnification, Magnification]:
    """The edge: parse the requested levels once (:mod:`.levels`) and choose the guide for ``size``."""
    tmag = _resolve_target(pipe, target)
    gmag = parse_level(pipe, guide, "guide magnification") if guide is not None else None
    return _choose_guide(pipe, gmag, tmag, size), tmag


def _choose_guide(pipe, gmag: Magnification | None, tmag: Magnification, size: int | None) -> Magnification:
    tile = pipe.config.image_size
    if size is not None and (size < tile or size % tile):
        raise ConfigError(f"size must be a positive multiple of the {tile}-px tile; got {size}")
    if gmag is not None:
        return gmag
    if size is None:
        raise ConfigError("give the guide magnification (e.g. 1.25x) or the output size")
    k = size // tile
    if k & (k - 1) or k < 2:
        raise ConfigError(
            f"size {size} is not a power-of-two number of {tile}-px tiles (2, 4, 8, 16, … × {tile})"
        )
    found = next((m for m in pipe.scales if m.downsample == tmag.downsample * k), None)
    if found is None:
        raise ConfigError(
            f"a {size}² image at {tmag} needs a guide {k}× coarser, which this model "
            f"({', '.join(pipe.scales.names)}) does not have"
        )
    return found


def plan_large_image(
    pipe,
    guide: str | int | Magnification | None = None,
    target: str | int | Magnification | None = None,
    size: int | None = None,
    region: tuple[int, int, int, int] | None = None,
    guide_shape: tuple[int, int] | None = None,
) -> LargeImagePlan:
    """Check one scale pair and work out its geometry (no model work). ``size`` is the side of the full
    output in target pixels (``k × tile``); with ``guide`` omitted it chooses the guide. ``region =
    (x, y, w, h)`` in target pixels, multiples of the tile size, selects a viewport. ``guide_shape`` is the
    pixel size of a fixed guide image (super-resolution input, cascade stage) instead of one patch."""
    gmag, tmag = _resolve_levels(pipe, guide, target, size)
    return _plan_pair(pipe, gmag, tmag, size, region, guide_shape)


def _plan_pair(
    pipe,
    gmag: Magnification,
    tmag: Magnification,
    size: int | None = None,
    region: tuple[int, int, int, int] | None = None,
    guide_shape: tuple[int, int] | None = None,
) -> LargeImagePlan:
    tile = pipe.config.image_size
    k = scale_ratio(pipe, gmag, tmag)
    if guide_shape is None:
        rows = cols = k
        if size is not None and size != k * tile:
            raise ConfigError(
                f"a {gmag} guide with {tmag} tiles gives a {k * tile}² image (k = {k}); --size {size} does not "
                f"match (omit --size, or choose the guide for it)"
            )
    else:
        foot = tile // k
        if guide_shape[0] % foot or guide_shape[1] % foot:
            raise InputError(f"the guide image {guide_shape} is not made of whole {foot}-px tile footprints")
        rows, cols = guide_shape[0] // foot, guide_shape[1] // foot
    if region is None:
        return LargeImagePlan(gmag, tmag, k, tile, rows, cols, 0, 0, rows, cols)
    x, y, w, h = (int(v) for v in region)
    if any(v % tile for v in (x, y, w, h)) or w < tile or h < tile:
        raise ConfigError(f"region (x, y, w, h) = {region} must be in whole {tile}-px tiles")
    if x < 0 or y < 0 or x + w > cols * tile or y + h > rows * tile:
        raise ConfigError(f"region {region} leaves the {cols * tile}×{rows * tile} image")
    return LargeImagePlan(gmag, tmag, k, tile, rows, cols, y // tile, x // tile, h // tile, w // tile)


@dataclass(frozen=True)
class CoarseRequest:
    """A request past one guide patch: the coarse canvas (``rows × cols`` patches at ``level``) and the
    cascade stages (:class:`LargeImagePlan`) it guides, the first one with a fixed guide of
    ``(rows·tile, cols·tile)`` pixels."""

    level: Magnification
    rows: int
    cols: int
    stages: list


def coarse_request(pipe, target: Magnification, size: int | None, region=None) -> CoarseRequest | None:
    """The geometry of ``generate --size`` past the coarsest level's one patch (None when one patch covers
    ``size``): the coarse canvas at the model's coarsest level, then the cascade of :func:`plan_stages`
    (one scale pair, or two through the coarsest level the target allows) with a fixed first guide."""
    if size is None:
        return None
    tmag = require_level(pipe, target, "target magnification")
    coarsest = pipe.scales[len(pipe.scales) - 1]
    if coarsest.index <= tmag.index:
        return None
    found = coarse_canvas_needed(pipe, coarsest, tmag, size)
    if found is None:
        return None
    rows, cols = found
    tile = pipe.config.image_size
    shape = (rows * tile, cols * tile)
    k_max = 1 << max((tile // MIN_FOOTPRINT).bit_length() - 1, 0)
    if coarsest.downsample // tmag.downsample <= k_max:
        stages = [_plan_pair(pipe, coarsest, tmag, region=region, guide_shape=shape)]
    else:
        mid = pipe.scales[tmag.index + k_max.bit_length() - 1]
        first = _plan_pair(pipe, coarsest, mid, guide_shape=shape)
        stages = [first, _plan_pair(pipe, mid, tmag, region=region, guide_shape=(first.height, first.width))]
    return CoarseRequest(coarsest, rows, cols, stages)


def plan_stages(
    pipe,
    guide: str | int | Magnification | None = None,
    target: str | int | Magnification | None = None,
    size: int | None = None,
    region: tuple[int, int, int, int] | None = None,
) -> list[LargeImagePlan]:
    """One scale pair when its ratio is allowed (k ≤ 16 for 256² patches), else a cascade of two pairs:
    guide → intermediate level (the coarsest one the target allows, 1.25x for 20x) → target, e.g.
    0.15625x → 1.25x → 20x for a 32768² image. The first stage is always generated whole; ``region``
    selects the tiles of the last one. A ``size`` past what one guide patch at the coarsest level covers
    (e.g. 131072² at 20x) gives the stages after a coarse canvas (:mod:`.coarse`): their first guide is
    that canvas, a fixed image."""
    tile = pipe.config.image_size
    if guide is None and size is not None:  # past one guide patch: the stages after a coarse canvas
        request = coarse_request(pipe, _resolve_target(pipe, target), size, region)
        if request is not None:
            return request.stages
    gmag, tmag = _resolve_levels(pipe, guide, target, size)
    k_max = 1 << max((tile // MIN_FOOTPRINT).bit_length() - 1, 0)
    if gmag.index <= tmag.index or gmag.downsample // tmag.downsample <= k_max:
        return [_plan_pair(pipe, gmag, tmag, size, region)]
    k_total = gmag.downsample // tmag.downsample
    if size is not None and size != k_total * tile:
        raise ConfigError(
            f"a {gmag} guide with {tmag} tiles gives a {k_total * tile}² image; --size {size} does not match"
        )
    mid = pipe.scales[tmag.index + k_max.bit_length() - 1]
    first = _plan_pair(pipe, gmag, mid)
    second = _plan_pair(pipe, mid, tmag, region=region, guide_shape=(first.height, first.width))
    return [first, second]


def check_reference_grid(pipe, grid: torch.Tensor, plan: LargeImagePlan) -> torch.Tensor:
    """The reference must be the unpooled base grid of exactly the guide's field of view."""
    if not isinstance(grid, torch.Tensor) or grid.dim() != 3:
        raise InputError(f"the reference must be an SSL grid [C, h, w]; got {getattr(grid, 'shape', grid)}")
    channels = pipe.config.ssl_channels
    if grid.shape[0] != channels:
        raise InputError(f"the reference grid has {grid.shape[0]} channels; this model expects {channels}")
    side = plan.guide.grid_size
    if tuple(grid.shape[1:]) != (side, side):
        h, w = grid.shape[1:]
        hint = ""
        fits = next((m for m in pipe.scales if m.grid_size == h == w), None)
        if fits is not None and fits.index > plan.target.index:
            hint = f" (a {h}×{w} grid is the field of view of a {fits} guide)"
        raise InputError(
            f"a {plan.guide} guide covers {side}×{side} base tiles ({side * plan.tile_px}² px at "
            f"{pipe.scales[0]}); the reference grid is {h}×{w}{hint}"
        )
    return grid.float().cpu()


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
        return LargeImageResult(None, None, np.asarray(guide_u8[:]), None, metrics, settings, pixels)
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
    return LargeImageResult(image, out, np.asarray(guide_u8[:]), latent, metrics, settings, pixels)


def _result_metrics(result: ConstrainedResult, computed: list[int], output: dict, seconds: dict) -> dict:
    return {
        "tiles": {key[6:]: v for key, v in result.metrics.items() if key.startswith("tiles_")},
        "output": output,
        "computed_tiles": len(computed),  # the request's tiles + the rest of their canvas blocks
        "blocks": result.metrics.get("blocks"),
        "block_seconds": result.metrics.get("block_seconds"),
        "guide_seconds": result.metrics.get("guide_seconds"),
        "unet_forwards": result.metrics["unet_forwards"],
        "vq_passes": result.metrics["vq_passes"],
        "seconds": seconds,
    }


def _finite(d: dict) -> dict:
    return {k: (v if not isinstance(v, float) or np.isfinite(v) else str(v)) for k, v in d.items()}


def finish_outputs(
    result: LargeImageResult, state: RunState, extra_images: dict[str, np.ndarray] | None = None
):
    """Write ``<stem>_guide.png`` (the guide / low-resolution input), any ``<stem>_<name>.png`` of
    ``extra_images`` and ``<stem>.json`` (metrics + settings) beside the output; drop the resume state.

    ``result.settings`` and ``result.metrics`` become their JSON form (lists, strings for paths), so that
    they equal the record in ``<stem>.json`` whether or not a file is written."""
    result.settings = json.loads(json.dumps(result.settings, default=str))
    result.metrics = json.loads(json.dumps(result.metrics, default=str))
    result.pixels = None  # it lived in the state folder, removed now
    if rank_world()[0] != 0:  # rank 0 writes the files and removes the state
        return result
    if result.path is not None:
        _write_sidecars(result.path, result.guide_image, result.metrics, result.settings, extra_images or {})
    state.clear()
    return result


def _write_sidecars(out: Path, guide: np.ndarray, metrics: dict, settings: dict, extra: dict) -> None:
    from ..io import save_png

    stem = out.name.split(".")[0]
    save_png(out.with_name(f"{stem}_guide.png"), guide, {"role": "guide", **_flat(settings)})
    for name, image in extra.items():
        save_png(out.with_name(f"{stem}_{name}.png"), image, {"role": name, **_flat(settings)})
    record = {"output": out.name, "metrics": metrics, "settings": settings}
    tmp = out.with_name(f".{stem}.json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(out.with_name(f"{stem}.json"))


def _flat(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if len(k) < 80}


def base_settings(pipe, plan: LargeImagePlan, seed: int, **parts: Any) -> dict[str, Any]:
    """The provenance record: request, every config, seed, model."""
    record: dict[str, Any] = {"method": "zoomldm joint multi-scale sampling", **plan.describe(), "seed": seed}
    for name, value in parts.items():
        record[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    record["model"] = {k: str(v) for k, v in pipe.provenance.items()}
    if getattr(pipe, "inference_settings", None):  # pipe.optimize(): another rounding, so part of the record
        record["inference_settings"] = dict(pipe.inference_settings)
    return record


def _grid_digest(grid: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(grid.float().contiguous().numpy().tobytes()).hexdigest()[:16]


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
    if coarse_req is not None:
        if reference is None:
            span = coarse_req.level.downsample // plan.target.downsample * pipe.config.image_size
            raise InputError(
                f"sizes above {span} px need a reference region covering the whole image (its SSL grid, "
                f"or an image embedded with --encoder): the coarse canvas of {coarse_req.rows}×"
                f"{coarse_req.cols} {coarse_req.level} patches is conditioned on it"
            )
        if not isinstance(reference, torch.Tensor) or reference.dim() != 3:
            raise InputError(
                f"the reference must be an SSL grid [C, h, w]; got {getattr(reference, 'shape', reference)}"
            )
        check_coarse_grid(pipe, reference, coarse_req.level, coarse_req.rows, coarse_req.cols)
        grid = reference.float().cpu()
    elif reference is not None:
        grid = check_reference_grid(pipe, reference, stages[0])
    elif cdm is None:
        raise InputError(
            "large images need a reference region (its SSL grid, or an image embedded with --encoder); "
            "reference-free generation needs a CDM checkpoint (--cdm)"
        )
    else:
        check_cdm_fits(pipe, cdm)
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
        parts["reference"] = {"kind": "ssl grid", "shape": list(grid.shape), "sha256_16": _grid_digest(grid)}
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
    if coarse_req is not None:
        latent = generate_coarse_canvas(
            pipe,
            coarse_req.level,
            grid,
            coarse_req.rows,
            coarse_req.cols,
            seed=seed,
            config=config,
            progress=progress,
        )
        coarse_pixels = decode_coarse_canvas(pipe, latent, progress=progress)
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
    return finish_outputs(result, state, {"guide_top": coarse.guide_image})


def _cdm_guide(
    pipe, cdm, mag: Magnification, inversion: InversionConfig, steps: int, seed: int, progress: bool
):
    """Reference-free: CDM tokens → guide patch → inverted base grid. Returns (grid, guide image [3,S,S])."""
    from ..models.cdm_diffusion import sample_cdm

    tokens = sample_cdm(cdm, mag.index, 1, generator=generator_for(seed, "cdm"), progress=progress)
    patch = pipe(
        context=tokens.float().cpu(),
        magnification=mag,
        num_images=1,
        num_inference_steps=steps,
        guidance_scale=2.0,
        scheduler="plms",
        seed=seed,
        progress=progress,
    )
    image = pipe.decode_latents(patch.latents)
    inverted = invert_conditions(pipe, image, mag, config=inversion, seed=seed, progress=progress)
    return inverted.grids[0], image[0].cpu()
