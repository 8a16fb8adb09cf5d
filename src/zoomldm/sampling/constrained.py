"""Joint multi-scale sampling: the inexact-Newton constrained sampler of SPEC §4.3.

Target tiles (``k × k`` tiles at the target magnification under one guide patch, or any subset of the tiles
under a larger guide image) are denoised on the strided grid of :mod:`.strided`. At every outer step the
guide is denoised freely (or is a fixed image: super-resolution, cascades), and each tile is pulled toward
its footprint in the guide by ``inner_steps`` Newton iterations whose Jacobian-vector products are finite
differences through the VQ encoder and the denoiser ("VAE Newton", [FCS])::

    img  = VQdecode(x̂0)                          # quantising decode
    e_im = N( up(G − down(img)) )                # constraint residual lifted to tile resolution
    e_z  = N( VQencode(img + h·e_im) − VQencode(img) )
    g    = N( (x̂0(x + h·e_z) − x̂0(x)) / h )
    x    = x + lr·g ;  recompute ε, x̂0

with ``N`` = division of each sample by its max-abs value, ε = ``(w+1)·ε_c − w·ε_u`` (s = w + 1 in
:func:`guided_eps`), the UNet called with ``t`` and the coefficients read at ``t − 1``. The tile loop is
batched: ``tile_batch`` tiles go through the whole Newton loop together, their conditional and
unconditional rows in one UNet call; the two encoder passes of an iteration are one VQ call.

Noise is keyed by tile index and step (:mod:`.noise`), and batches are blocks of the tile canvas
(:func:`~.blocks.batch_rows`), not positions in the request. Both matter because the fixed-size
∞-normalised Newton step amplifies rounding: a batched convolution rounds a tile differently in another
batch, and within a few iterations that is a visible difference (docs/large_images.md, "Reproducibility").
A request made of whole blocks (:func:`~.blocks.block_cover`; :func:`~.joint.render_large` extends every
request so) therefore reproduces those tiles of the full generation bitwise, on the same device, dtype and
``tile_batch``.

The tiles live on a :class:`~.canvas.TileCanvas` (zarr v3, one chunk per block) and only the blocks in flight
are in memory (:func:`sample_canvas`): a run resumes from its last finished block, and the blocks of a step
are sharded over the processes of a multi-GPU launch (:mod:`.distributed`) without changing the image.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError, InputError
from ..progress import make_progress, progress_enabled
from ..scales import Magnification
from .blocks import batch_rows, block_cover, block_shape, canvas_layout
from .canvas import BlockLayout, TileCanvas
from .distributed import all_reduce_sum, barrier, ensure_process_group, shard
from .footprints import (
    MIN_FOOTPRINT,
    FixedGuide,
    SampledGuide,
    _fixed_footprints,
    _geometry,
    scale_ratio,
    split_footprints,
)
from .levels import require_level
from .memory import auto_tile_batch
from .metrics import ConstraintAccumulator, to_levels
from .newton import JointSamplingConfig, _Ops, inf_normalize, newton_constrain
from .noise import keyed_normal
from .resize import downsampler, upsampler
from .strided import predict_x0, strided_steps, strided_update

__all__ = [
    "MIN_FOOTPRINT",
    "ConstrainedResult",
    "FixedGuide",
    "JointSamplingConfig",  # defined in .newton (shared with .memory), re-exported here
    "SampledGuide",
    "block_cover",
    "canvas_layout",
    "constrained_sample",
    "inf_normalize",
    "newton_constrain",
    "resolve_tile_batch",
    "sample_canvas",
    "scale_ratio",
]


@dataclass
class ConstrainedResult:
    """Final tile latents ``[n,C,h,w]`` (CPU, row order of ``tile_ids``; empty from :func:`sample_canvas`,
    whose tiles stay on its canvas in buffer ``final_buffer``), the final guide latent (None for a fixed
    guide) and guide image ``[3,H,W]`` in [-1, 1] (None for a fixed guide given as a uint8 array), and the
    constraint metrics of the tiles."""

    tiles: torch.Tensor
    tile_ids: list[int]
    guide_latent: torch.Tensor | None
    guide_image: torch.Tensor | None
    metrics: dict = field(default_factory=dict)
    final_buffer: int = 0


def resolve_tile_batch(pipe, config: JointSamplingConfig, n_tiles: int) -> int:
    """``config.tile_batch``, with ``"auto"`` measured for ``n_tiles`` tiles (:mod:`.memory`)."""
    if config.tile_batch != "auto":
        return int(config.tile_batch)
    return auto_tile_batch(pipe, n_tiles)


def constrained_sample(
    pipe,
    guide_magnification: Magnification,
    tile_contexts: torch.Tensor,
    tile_noise: torch.Tensor,
    guide: SampledGuide | FixedGuide,
    *,
    target_magnification: Magnification | None = None,
    tile_ids: Sequence[int] | None = None,
    config: JointSamplingConfig | None = None,
    seed: int = 0,
    unet=None,
    start_step: int = 0,
    progress: bool = True,
) -> ConstrainedResult:
    """Denoise target tiles under a guide with the constraint of SPEC §4.3 (the core of joint sampling,
    super-resolution, cascades and viewport requests), all in memory: the tensors in, the tiles out.

    This is :func:`sample_canvas` on an in-memory canvas; large images run :func:`sample_canvas` on a zarr
    canvas on disk with contexts and noise made block by block (:func:`~.joint.render_large`).

    Args:
        pipe: a :class:`~zoomldm.pipeline.ZoomLDMPipeline` (its UNet — EMA when loaded so, as the
            official joint sampling — its VQ, config and scales).
        guide_magnification: level of the guide; ``k`` = ratio to the target level. Both levels are
            :class:`~zoomldm.scales.Magnification` objects (``pipe.magnification("5x")``): parsed once by
            the caller (:mod:`.levels`).
        tile_contexts: ``[n, 65, D]`` Summarizer contexts of the tiles to generate (same order as
            ``tile_ids``; see :func:`.conditions.tile_contexts`).
        tile_noise: ``[n, C, h, w]`` initial noise of those tiles (``h = pipe.config.latent_size``).
        guide: :class:`SampledGuide` (denoised jointly) or :class:`FixedGuide`.
        target_magnification: level of the tiles (default: the base level, 20x / 1x).
        tile_ids: row-major indices of the tiles in the canvas under the guide (default ``0..n−1``); the
            canvas is ``(W_guide / f)`` tiles wide with ``f = image_size / k`` the footprint.
        config: :class:`JointSamplingConfig` (official defaults).
        seed: keys the per-step noise ξ (with the tile index and step).
        unet: another UNet to use (default the pipeline's).
        start_step: the first outer step to run (``tile_noise`` and the guide's noise are the state at
            its start).
        progress: show progress bars.
    """
    n = tile_contexts.shape[0]
    channels, latent = pipe.unet.config.in_channels, pipe.config.latent_size
    if tile_noise.shape != (n, channels, latent, latent):
        raise InputError(
            f"tile noise must be [{n}, {channels}, {latent}, {latent}]; got {tuple(tile_noise.shape)}"
        )
    ids = list(range(n)) if tile_ids is None else [int(i) for i in tile_ids]
    if len(ids) != n:
        raise InputError(f"got {len(ids)} tile ids for {n} tile contexts")
    position = {tid: i for i, tid in enumerate(ids)}
    contexts = tile_contexts.to(device=pipe.device, dtype=torch.float32)
    noise = tile_noise.detach().float().cpu()

    def pick(values: torch.Tensor) -> Callable[[list[int]], torch.Tensor]:
        return lambda block_ids: values[[position[t] for t in block_ids]]

    return sample_canvas(
        pipe,
        guide_magnification,
        None,
        ids,
        pick(contexts),
        pick(noise),
        guide,
        target_magnification=target_magnification,
        config=config,
        seed=seed,
        unet=unet,
        first_step=start_step,
        progress=progress,
        return_tiles=True,
    )


def sample_canvas(
    pipe,
    guide_magnification: Magnification,
    canvas: TileCanvas | None,
    tile_ids: Sequence[int],
    contexts_of: Callable[[list[int]], torch.Tensor],
    noise_of: Callable[[list[int]], torch.Tensor],
    guide: SampledGuide | FixedGuide,
    *,
    target_magnification: Magnification | None = None,
    config: JointSamplingConfig | None = None,
    seed: int = 0,
    unet=None,
    first_step: int = 0,
    progress: bool = True,
    label: str = "joint sampling",
    return_tiles: bool = False,
) -> ConstrainedResult:
    """The block engine of constrained sampling: tiles ``tile_ids`` on ``canvas``, block by block.

    ``contexts_of(ids)`` and ``noise_of(ids)`` give the contexts ``[n, 65, D]`` and initial noise
    ``[n, C, P, P]`` of a block's tiles, made when the block is processed (never for the whole image).
    ``canvas`` (:class:`~.canvas.TileCanvas`, None: a new in-memory one) holds the tiles between steps and
    the record of finished blocks: a run continues from the last finished block of the last step. Blocks of
    a step are sharded over the processes of a multi-GPU launch (:mod:`.distributed`); each rank computes
    the sampled guide itself (deterministic) and rank 0 saves it. Memory: the blocks in flight, their
    contexts and guide footprints, and one guide patch — independent of the number of tiles.

    Returns the result with ``tiles`` empty (they are on the canvas: ``canvas.latent(result.final_buffer)``,
    or ``canvas.view(...)``) unless ``return_tiles``; ``metrics`` are summed over the ranks, and hold the
    block count, this rank's per-block seconds (``block_seconds``: n, mean, min, max) and the sampled
    guide's seconds (``guide_seconds``, the serial part of a step).
    """
    config = config or JointSamplingConfig()
    gmag = require_level(pipe, guide_magnification, "guide magnification")
    tmag = require_level(pipe, target_magnification, "target magnification")
    k = scale_ratio(pipe, gmag, tmag)
    size, latent = pipe.config.image_size, pipe.config.latent_size
    footprint = size // k
    channels = pipe.unet.config.in_channels
    ids = [int(i) for i in tile_ids]
    tiles_per_row, tiles_per_col = _geometry(pipe, guide, footprint, k)
    n_tiles = tiles_per_row * tiles_per_col
    if ids and (min(ids) < 0 or max(ids) >= n_tiles):
        raise InputError(f"tile ids must be in 0..{n_tiles - 1} for this guide; got {min(ids)}..{max(ids)}")
    device = pipe.device
    rank, world = ensure_process_group(device)
    tile_batch = resolve_tile_batch(pipe, config, len(ids))
    bh, bw = block_shape(tile_batch)
    layout = BlockLayout(tiles_per_col, tiles_per_row, bh, bw, channels, latent)
    if canvas is None:
        canvas = TileCanvas.open(None, layout, "in-memory")
    elif canvas.layout != layout:
        raise ConfigError(f"the canvas layout {canvas.layout} does not match this request ({layout})")
    ops = _Ops(pipe, unet or pipe.unet, config.guidance_w)
    down, up = downsampler(size, k).to(device), upsampler(size, k).to(device)

    # 1. guide: a fixed image (read per block footprint), or a latent denoised alongside the tiles
    fixed = guide.image if isinstance(guide, FixedGuide) else None
    if isinstance(guide, SampledGuide):
        guide_ctx = guide.context.to(device=device, dtype=torch.float32).reshape(1, *guide.context.shape[-2:])
        guide_noise = guide.noise.to(device=device, dtype=torch.float32).reshape(1, channels, latent, latent)

    # 2. the blocks (row-major; within a block by tile id), this rank's share, and where to continue
    batches = [[ids[p] for p in batch] for batch in batch_rows(ids, tiles_per_row, tile_batch)]
    blocks = [(layout.block_of(b[0]), b) for b in batches]
    mine = shard(blocks, rank, world)
    steps = strided_steps(pipe.config.schedule, config.t0, config.stride)
    start, finished = canvas.resume_point([b for b, _ in blocks], first_step)
    guide_seconds = 0.0  # the sampled guide's steps: every rank's serial part with the barriers
    block_seconds: list[float] = []  # this rank's blocks, in order (a GPU's queue is drained by the write)
    barrier()  # every rank has read the record before any writes to it
    x_guide = None
    if isinstance(guide, SampledGuide):
        x_guide = _guide_at(canvas, start, first_step, guide_noise, guide_ctx, ops, steps, seed, config)

    bar = make_progress() if progress_enabled(progress) else None
    with bar if bar is not None else contextlib.nullcontext(), torch.no_grad():
        n_steps = len(steps) - first_step
        outer = bar.add_task(f"{label}: steps", total=n_steps, completed=start - first_step) if bar else None
        inner = bar.add_task(f"{label}: blocks", total=len(mine)) if bar else None
        for s in range(start, len(steps)):
            step = steps[s]
            # 3. the guide at this step (SPEC §4.3: unconstrained; its x̂0 decoded and clamped is G)
            guide_img = None
            if x_guide is not None:
                guide_started = time.perf_counter()
                counted = (ops.unet_forwards, ops.vq_passes)
                eps_g = ops.eps(x_guide, step, guide_ctx)
                x0_g = predict_x0(x_guide, eps_g, step)
                guide_img = ops.decode(x0_g).clamp(-1, 1)[0]
                xi = keyed_normal(x_guide.shape[1:], seed, "guide_step", [0], step.index, device)
                x_guide_next = strided_update(x0_g, eps_g, xi, step, config.variance_preserving_update)
                if rank == 0:
                    canvas.save_guide(s + 1, x_guide_next)
                else:  # every rank computes the guide; it is counted once
                    ops.unet_forwards, ops.vq_passes = counted
                guide_seconds += time.perf_counter() - guide_started
            done = finished if s == start else set()
            if bar:
                bar.reset(inner, total=len(mine), completed=sum(b in done for b, _ in mine))
                bar.update(inner, description=f"{label}: step {s + 1}/{len(steps)}, blocks")
            # 4. this rank's blocks through the Newton loop and the outer update; chunk, then marker
            for block, bids in mine:
                if block in done:
                    continue
                block_started = time.perf_counter()
                x = (noise_of(bids) if s == first_step else canvas.read_tiles(s, bids)).to(device)
                if fixed is None:
                    target = split_footprints(guide_img, footprint, bids, tiles_per_row)
                else:
                    target = _fixed_footprints(fixed, footprint, bids, tiles_per_row, device)
                x, eps, x0 = newton_constrain(ops, x, contexts_of(bids), target, step, config, down, up)
                xi = keyed_normal(x.shape[1:], seed, "tile_step", bids, step.index, device)
                canvas.write_tiles(
                    s + 1, bids, strided_update(x0, eps, xi, step, config.variance_preserving_update)
                )
                canvas.mark_done(s, block)
                block_seconds.append(time.perf_counter() - block_started)
                if bar:
                    bar.advance(inner)
            barrier()  # the step is complete on every rank
            if rank == 0 and s > first_step:
                canvas.drop_step(s - 1)
            if x_guide is not None:
                x_guide = x_guide_next
            if bar:
                bar.advance(outer)
        if start == len(steps) == first_step:  # nothing to run: the noise is the result
            for _, bids in mine:
                canvas.write_tiles(first_step, bids, noise_of(bids))
            barrier()

        # 5. final guide image and the constraint metrics of the tiles (their own decode, before any
        #    post-processing): down(decode(tile)) against the guide footprint, per block of this rank
        guide_img = None
        if x_guide is not None:
            if rank == 0:
                ops.vq_passes += 1
            guide_img = pipe.decode_latents(x_guide)[0].float()
        elif isinstance(fixed, torch.Tensor):
            guide_img = fixed.float()
        acc = ConstraintAccumulator(k)
        for _, bids in mine:
            img = ops.decode(canvas.read_tiles(len(steps), bids).to(device)).clamp(-1, 1)
            if fixed is None:
                target = split_footprints(guide_img, footprint, bids, tiles_per_row)
            else:
                target = _fixed_footprints(fixed, footprint, bids, tiles_per_row, device)
            acc.add(to_levels(img), to_levels(target))
    metrics = _reduce_metrics(acc, ops, device)
    metrics["tile_batch"] = tile_batch
    metrics["blocks"] = len(blocks)
    metrics["block_seconds"] = _spread(block_seconds)
    metrics["guide_seconds"] = guide_seconds
    tiles = canvas.read_tiles(len(steps), ids) if return_tiles and ids else None
    return ConstrainedResult(
        tiles=tiles if tiles is not None else torch.empty(0, channels, latent, latent),
        tile_ids=ids,
        guide_latent=None if x_guide is None else x_guide.cpu(),
        guide_image=None if guide_img is None else guide_img.cpu(),
        metrics=metrics,
        final_buffer=len(steps),
    )


def _guide_at(canvas, start, first_step, noise, context, ops, steps, seed, config) -> torch.Tensor:
    """The sampled guide's latent at the start of step ``start``: its noise, the saved one, or (saved by
    another run that did not get to save it) recomputed from the noise — the same values either way."""
    if start == first_step:
        return noise
    saved = canvas.load_guide(start)
    if saved is not None:
        return saved.to(noise.device)
    x = noise
    for step in steps[first_step:start]:
        eps = ops.eps(x, step, context)
        x0 = predict_x0(x, eps, step)
        xi = keyed_normal(x.shape[1:], seed, "guide_step", [0], step.index, x.device)
        x = strided_update(x0, eps, xi, step, config.variance_preserving_update)
    return x


def _spread(seconds: list[float]) -> dict[str, float | int]:
    """Count, mean, min and max of this rank's per-block times (a block = its Newton loop, update and
    chunk write; the guide's per-step work is not in it)."""
    if not seconds:
        return {"n": 0}
    return {"n": len(seconds), "mean": sum(seconds) / len(seconds), "min": min(seconds), "max": max(seconds)}


def _reduce_metrics(acc: ConstraintAccumulator, ops: _Ops, device) -> dict:
    """Constraint metrics and work counters, summed over the ranks."""
    names = list(acc.totals)
    flat = [v for name in names for v in acc.totals[name]] + [ops.unet_forwards, ops.vq_passes]
    summed = all_reduce_sum(flat, device)
    for i, name in enumerate(names):
        acc.totals[name] = [summed[3 * i], summed[3 * i + 1], int(summed[3 * i + 2])]
    metrics = {"tiles_" + key: value for key, value in acc.result().items()}
    metrics.update(unet_forwards=int(summed[-2]), vq_passes=int(summed[-1]))
    return metrics
