"""The work of each stage of the cascade: :class:`StagePlan` (geometry, tiles, blocks, UNet rows, VQ passes,
post-processing, decode windows, condition inversion and FLOPs of one scale pair) and the counts for a
tiled joint-sampling stage (:func:`_stage_plan`) and for the coarse sliding-window canvas
(:func:`_coarse_stage_plan`), exact for the sampler in :mod:`zoomldm.sampling.constrained` /
:mod:`zoomldm.sampling.newton`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: PLMS steps of the reference-free guide patch (``generate_large(guide_steps=50)``)
REFERENCE_FREE_GUIDE_STEPS = 50
COARSE_KIND = "sliding-window canvas"  # StagePlan.guide_kind of the coarse stage (sampling/coarse.py)
COARSE_WINDOW_BATCH = 8  # generate_coarse_canvas's default window_batch (tested equal)


@dataclass
class StagePlan:
    """One scale pair of the cascade: geometry and the work it costs."""

    name: str
    guide: str
    target: str
    k: int
    width: int
    height: int
    tiles: int  # tiles computed (the request's canvas blocks)
    block_shape: tuple[int, int]
    blocks: int
    tile_batch: int
    outer_steps: int
    inner_steps: int
    newton_steps: int  # outer steps that run the Newton iterations (all unless newton_max_t < t0)
    guide_kind: str  # "sampled patch" | "fixed image"
    unet_rows: int  # joint sampling (rows: cond and uncond count separately)
    vq_passes: int  # joint sampling (images through the VQ encoder or decoder), incl. the metric decodes
    post_steps: int = 0
    post_windows: int = 0
    post_unet_rows: int = 0
    decode_windows: int = 0
    inversion_patches: int = 0
    inversion_unet_rows: int = 0
    flops: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coarse_stage_plan(pipe, coarse, settings, profile) -> StagePlan:
    """The coarse canvas as a stage: sliding-window denoising from noise (no tiles, no Newton), decoded."""
    from ..coarse import coarse_canvas_cost

    cost = coarse_canvas_cost(pipe, coarse.rows, coarse.cols, settings.sampling, settings.decode)
    tile = pipe.config.image_size
    flops = cost.unet_rows * profile["unet_flops"] + cost.vq_passes * profile["decode_flops"]
    return StagePlan(
        name="coarse canvas",
        guide="noise",
        target=coarse.level.name,
        k=1,
        width=coarse.cols * tile,
        height=coarse.rows * tile,
        tiles=coarse.rows * coarse.cols,
        block_shape=(1, 1),
        blocks=cost.windows,
        tile_batch=COARSE_WINDOW_BATCH,
        outer_steps=cost.steps,
        inner_steps=0,
        newton_steps=0,
        guide_kind=COARSE_KIND,
        unet_rows=cost.unet_rows,
        vq_passes=0,
        decode_windows=cost.vq_passes,
        flops=float(flops),
    )


def _stage_plan(
    pipe, index, count, geo, settings, sr, profile, reference_free, fixed_first: bool = False
) -> StagePlan:
    from ..constrained import block_cover, block_shape
    from ..decode import window_starts
    from ..strided import strided_steps

    cfg = pipe.config
    sampling = settings.sampling
    tile_batch = int(sampling.tile_batch)
    computed = block_cover(geo.tile_ids, geo.canvas_cols, geo.canvas_rows, tile_batch)
    n = len(computed)
    bh, bw = block_shape(tile_batch)
    blocks = _count_blocks(computed, geo.canvas_cols, bh, bw)
    schedule = strided_steps(cfg.schedule, sampling.t0, sampling.stride)
    steps = len(schedule)
    inner = sampling.inner_steps
    newton = sum(sampling.iterations_at(s.t) for s in schedule)  # Newton iterations over the steps
    rows_per_eps = 1 if sampling.guidance_w == 0 else 2
    # reference-free: a fixed CDM guide; past one guide patch: the decoded coarse canvas
    sampled_guide = index == 0 and not sr and not reference_free and not fixed_first
    unet_rows = n * (steps + 2 * newton) * rows_per_eps
    vq = n * 3 * newton + n
    if sampled_guide:
        unet_rows += steps * rows_per_eps
        vq += steps + 1
    P = cfg.latent_size
    lat_h, lat_w = geo.rows * P, geo.cols * P
    post_steps = post_windows = post_rows = 0
    if settings.postprocess is not None:
        post = settings.postprocess
        window, stride = post.resolved(P)
        post_steps = len(strided_steps(cfg.schedule, post.t0, post.stride))
        post_windows = len(window_starts(lat_h, window, stride)) * len(window_starts(lat_w, window, stride))
        post_rows = post_steps * post_windows * (1 if post.guidance_w == 0 else 2)
    dec = settings.decode
    decode_windows = len(window_starts(lat_h, dec.window, dec.stride)) * len(
        window_starts(lat_w, dec.window, dec.stride)
    )
    inv_patches = inv_rows = 0
    if sr:
        inv_patches = (geo.canvas_rows // geo.k) * (geo.canvas_cols // geo.k)
        inv_rows = inv_patches * settings.inversion.steps
    elif reference_free and index == 0:  # the CDM's guide patch (PLMS, s = 2), then its inversion
        inv_patches = 1
        inv_rows = settings.inversion.steps + REFERENCE_FREE_GUIDE_STEPS * 2
    flops = (unet_rows + post_rows + 3 * inv_rows) * profile["unet_flops"]
    flops += n * newton * (profile["decode_flops"] + 2 * profile["encode_flops"])
    flops += (n + decode_windows) * profile["decode_flops"]
    name = f"stage {index + 1}/{count}" if count > 1 else "stage 1/1"
    return StagePlan(
        name=name,
        guide=geo.guide.name,
        target=geo.target.name,
        k=geo.k,
        width=geo.width,
        height=geo.height,
        tiles=n,
        block_shape=(bh, bw),
        blocks=blocks,
        tile_batch=tile_batch,
        outer_steps=steps,
        inner_steps=inner,
        newton_steps=sum(1 for s in schedule if sampling.iterations_at(s.t)),
        guide_kind="sampled patch" if sampled_guide else "fixed image",
        unet_rows=unet_rows,
        vq_passes=vq,
        post_steps=post_steps,
        post_windows=post_windows,
        post_unet_rows=post_rows,
        decode_windows=decode_windows,
        inversion_patches=inv_patches,
        inversion_unet_rows=inv_rows,
        flops=float(flops),
    )


def _count_blocks(ids: list[int], cols: int, bh: int, bw: int) -> int:
    return len({(tid // cols // bh, tid % cols // bw) for tid in ids})
