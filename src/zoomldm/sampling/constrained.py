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
(:func:`batch_rows`), not positions in the request. Both matter because the fixed-size ∞-normalised Newton
step amplifies rounding: a batched convolution rounds a tile differently in another batch, and within a few
iterations that is a visible difference (docs/large_images.md, "Reproducibility"). A request made of whole
blocks (:func:`block_cover`; :func:`~.joint.render_large` extends every request so) therefore reproduces
those tiles of the full generation bitwise, on the same device, dtype and ``tile_batch``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError, InputError
from ..progress import make_progress, progress_enabled
from ..scales import Magnification
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
    "constrained_sample",
    "inf_normalize",
    "newton_constrain",
    "resolve_tile_batch",
    "scale_ratio",
]

#: footprint of a target tile in the guide must stay at least this many pixels (k ≤ 16 for 256² patches,
#: the authors' range; larger ratios are reached by cascading scale pairs)
MIN_FOOTPRINT = 16


@dataclass
class SampledGuide:
    """A guide patch denoised alongside the tiles from ``noise`` [1,C,h,w] with ``context`` [1,65,D]."""

    context: torch.Tensor
    noise: torch.Tensor


@dataclass
class FixedGuide:
    """A fixed guide image ``[3, H, W]`` in [-1, 1] at the guide magnification (super-resolution: the real
    low-resolution image; cascades: a decoded coarser stage). ``H, W`` are multiples of the tile footprint."""

    image: torch.Tensor


@dataclass
class ConstrainedResult:
    """Final tile latents ``[n,C,h,w]`` (CPU, row order of ``tile_ids``), the final guide latent (None for a
    fixed guide) and guide image ``[3,H,W]`` in [-1, 1], and the constraint metrics of the tiles."""

    tiles: torch.Tensor
    tile_ids: list[int]
    guide_latent: torch.Tensor | None
    guide_image: torch.Tensor
    metrics: dict = field(default_factory=dict)


def scale_ratio(pipe, guide: Magnification, target: Magnification) -> int:
    """``k`` = base pixels of a guide pixel / of a target pixel, validated for joint sampling."""
    if guide.domain != target.domain:
        raise ConfigError(f"guide {guide} and target {target} are levels of different domains")
    if guide.index <= target.index:
        raise ConfigError(
            f"the guide / input magnification ({guide}) must be coarser than the output's ({target}); "
            f"levels: {', '.join(pipe.scales.names)}"
        )
    k = guide.downsample // target.downsample
    size = pipe.config.image_size
    if size % k or size // k < MIN_FOOTPRINT:
        largest = pipe.scales[min(target.index + _log2(size // MIN_FOOTPRINT), len(pipe.scales) - 1)]
        raise ConfigError(
            f"a {guide} guide for {target} tiles is a ratio of {k}: each tile would cover "
            f"{size / k:g} guide pixels (at least {MIN_FOOTPRINT} needed); the coarsest guide for {target} "
            f"is {largest} (generate_large_image cascades two scale pairs for larger images)"
        )
    return k


def _log2(n: int) -> int:
    return max(n.bit_length() - 1, 0)


def block_shape(tile_batch: int) -> tuple[int, int]:
    """Rows × columns of the canvas blocks that form the tile batches: as square as ``tile_batch`` allows
    (16 → 4×4, 64 → 8×8, 8 → 2×4, 1 → 1×1), so that a viewport touches few blocks."""
    rows = max(1, math.isqrt(int(tile_batch)))
    return rows, max(1, int(tile_batch) // rows)


def batch_rows(ids: Sequence[int], tiles_per_row: int, tile_batch: int) -> list[list[int]]:
    """The batches of a request: positions in ``ids`` grouped by the canvas block of their tile (row-major
    blocks of :func:`block_shape`; within a block, by tile id).

    Why blocks and not consecutive positions: a batch's rounding depends on which tiles share it, and the
    Newton loop amplifies rounding (module docstring). With batches fixed by the canvas, a request that
    contains whole blocks (:func:`block_cover`) batches every tile as the full image does, so its tiles are
    bitwise those of the full image."""
    bh, bw = block_shape(tile_batch)
    blocks: dict[tuple[int, int], list[int]] = {}
    for pos, tid in sorted(enumerate(ids), key=lambda item: item[1]):
        r, c = divmod(int(tid), tiles_per_row)
        blocks.setdefault((r // bh, c // bw), []).append(pos)
    return [blocks[key] for key in sorted(blocks)]


def block_cover(ids: Sequence[int], tiles_per_row: int, tiles_per_col: int, tile_batch: int) -> list[int]:
    """All tile ids of the canvas blocks that ``ids`` touch, sorted (a superset of ``ids``)."""
    bh, bw = block_shape(tile_batch)
    cover: set[int] = set()
    for tid in ids:
        r, c = divmod(int(tid), tiles_per_row)
        r0, c0 = r // bh * bh, c // bw * bw
        for rr in range(r0, min(r0 + bh, tiles_per_col)):
            cover.update(range(rr * tiles_per_row + c0, rr * tiles_per_row + min(c0 + bw, tiles_per_row)))
    return sorted(cover)


def resolve_tile_batch(pipe, config: JointSamplingConfig, n_tiles: int) -> int:
    """``config.tile_batch``, with ``"auto"`` measured for ``n_tiles`` tiles (:mod:`.memory`)."""
    if config.tile_batch != "auto":
        return int(config.tile_batch)
    return auto_tile_batch(pipe, n_tiles)


def split_footprints(
    image: torch.Tensor, footprint: int, tile_ids: Sequence[int], tiles_per_row: int
) -> torch.Tensor:
    """The ``[n,3,f,f]`` footprints of tiles ``tile_ids`` (row-major) in a guide image ``[3,H,W]``."""
    out = []
    for tid in tile_ids:
        r, c = divmod(int(tid), tiles_per_row)
        out.append(image[:, r * footprint : (r + 1) * footprint, c * footprint : (c + 1) * footprint])
    return torch.stack(out)


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
    state: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    on_step: Callable[[int, torch.Tensor, torch.Tensor | None], None] | None = None,
    progress: bool = True,
) -> ConstrainedResult:
    """Denoise target tiles under a guide with the constraint of SPEC §4.3 (the core of joint sampling,
    super-resolution, cascades and viewport requests).

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
        start_step, state, on_step: resume support — ``state = (tile latents, guide latent)`` at the
            start of step ``start_step``; ``on_step(i, tiles, guide_latent)`` is called after each step.
        progress: show progress bars.
    """
    config = config or JointSamplingConfig()
    gmag = require_level(pipe, guide_magnification, "guide magnification")
    tmag = require_level(pipe, target_magnification, "target magnification")
    k = scale_ratio(pipe, gmag, tmag)
    size, latent = pipe.config.image_size, pipe.config.latent_size
    footprint = size // k
    n = tile_contexts.shape[0]
    channels = pipe.unet.config.in_channels
    if tile_noise.shape != (n, channels, latent, latent):
        raise InputError(
            f"tile noise must be [{n}, {channels}, {latent}, {latent}]; got {tuple(tile_noise.shape)}"
        )
    ids = list(range(n)) if tile_ids is None else [int(i) for i in tile_ids]
    if len(ids) != n:
        raise InputError(f"got {len(ids)} tile ids for {n} tile contexts")
    device = pipe.device
    ops = _Ops(pipe, unet or pipe.unet, config.guidance_w)
    down, up = downsampler(size, k).to(device), upsampler(size, k).to(device)

    # 1. guide: a fixed image, or a latent denoised alongside the tiles
    if isinstance(guide, FixedGuide):
        guide_img = guide.image.to(device=device, dtype=torch.float32)
        if guide_img.dim() != 3 or guide_img.shape[1] % footprint or guide_img.shape[2] % footprint:
            raise InputError(
                f"a fixed guide must be [3, H, W] with H, W multiples of the tile footprint {footprint}; "
                f"got {tuple(guide_img.shape)}"
            )
        x_guide, guide_ctx = None, None
        tiles_per_row = guide_img.shape[2] // footprint
        n_tiles = tiles_per_row * (guide_img.shape[1] // footprint)
    else:
        guide_ctx = guide.context.to(device=device, dtype=torch.float32).reshape(1, *guide.context.shape[-2:])
        x_guide = guide.noise.to(device=device, dtype=torch.float32).reshape(1, channels, latent, latent)
        guide_img = None
        tiles_per_row, n_tiles = k, k * k
    if ids and (min(ids) < 0 or max(ids) >= n_tiles):
        raise InputError(f"tile ids must be in 0..{n_tiles - 1} for this guide; got {min(ids)}..{max(ids)}")

    x_tiles = tile_noise.detach().float().cpu().clone()
    if state is not None:
        x_tiles = state[0].float().cpu().clone()
        if x_guide is not None and state[1] is not None:
            x_guide = state[1].to(device=device, dtype=torch.float32)
    steps = strided_steps(pipe.config.schedule, config.t0, config.stride)
    contexts = tile_contexts.to(device=device, dtype=torch.float32)
    tile_batch = resolve_tile_batch(pipe, config, n)
    batches = batch_rows(ids, tiles_per_row, tile_batch)

    bar = make_progress() if progress_enabled(progress) else None
    with bar if bar is not None else contextlib.nullcontext(), torch.no_grad():
        outer = bar.add_task("joint sampling steps", total=len(steps), completed=start_step) if bar else None
        inner = bar.add_task("tiles", total=n) if bar else None
        for step in steps[start_step:]:
            # 2. the guide at this step (SPEC §4.3: unconstrained; its x̂0 decoded and clamped is G)
            if x_guide is not None:
                eps_g = ops.eps(x_guide, step, guide_ctx)
                x0_g = predict_x0(x_guide, eps_g, step)
                guide_img = ops.decode(x0_g).clamp(-1, 1)[0]
            # 3. tiles, batch by batch, through the Newton loop, then the outer update
            if bar:
                bar.reset(inner, total=n)
            for batch in batches:
                bids = [ids[i] for i in batch]
                x = x_tiles[batch].to(device)
                target = split_footprints(guide_img, footprint, bids, tiles_per_row)
                x, eps, x0 = newton_constrain(ops, x, contexts[batch], target, step, config, down, up)
                xi = keyed_normal(x.shape[1:], seed, "tile_step", bids, step.index, device)
                x_tiles[batch] = strided_update(x0, eps, xi, step, config.variance_preserving_update).cpu()
                if bar:
                    bar.advance(inner, len(batch))
            if x_guide is not None:
                xi = keyed_normal(x_guide.shape[1:], seed, "guide_step", [0], step.index, device)
                x_guide = strided_update(x0_g, eps_g, xi, step, config.variance_preserving_update)
            if on_step is not None:
                on_step(step.index, x_tiles, None if x_guide is None else x_guide.cpu())
            if bar:
                bar.advance(outer)

        # 4. final guide image and the constraint metrics of the tiles (their own decode, before any
        #    post-processing): down(decode(tile)) against the guide footprint
        if x_guide is not None:
            ops.vq_passes += 1
            guide_img = pipe.decode_latents(x_guide)[0].float()
        metrics = _tile_metrics(ops, x_tiles, ids, guide_img, footprint, tiles_per_row, k, tile_batch)
    metrics.update(unet_forwards=ops.unet_forwards, vq_passes=ops.vq_passes, tile_batch=tile_batch)
    return ConstrainedResult(
        tiles=x_tiles,
        tile_ids=ids,
        guide_latent=None if x_guide is None else x_guide.cpu(),
        guide_image=guide_img.cpu(),
        metrics=metrics,
    )


def _tile_metrics(ops, x_tiles, ids, guide_img, footprint, tiles_per_row, k, batch) -> dict:
    acc = ConstraintAccumulator(k)
    for i in range(0, len(ids), batch):
        z = x_tiles[i : i + batch].to(guide_img.device)
        img = ops.decode(z).clamp(-1, 1)
        target = split_footprints(guide_img, footprint, ids[i : i + batch], tiles_per_row)
        acc.add(to_levels(img), to_levels(target))
    return {"tiles_" + key: value for key, value in acc.result().items()}
