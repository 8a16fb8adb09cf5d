"""Where the first guide of a large image comes from: a real region's reference grid, checked against the
plan before any model work (:func:`check_reference`, :func:`check_reference_grid`), or — reference-free,
with a CDM (SPEC §12 option ii) — a guide patch generated from CDM-sampled Summarizer tokens and the base
grid inverted from it (SPEC §5.1, :func:`_cdm_guide`)."""

from __future__ import annotations

import torch

from ..errors import InputError
from ..io.grids import is_lazy_grid, materialize_grid
from ..models.cdm import check_cdm_fits
from ..scales import Magnification
from .coarse import check_coarse_grid
from .inversion import InversionConfig, invert_conditions
from .noise import generator_for
from .stages import CoarseRequest, LargeImagePlan


def check_reference_grid(pipe, grid: torch.Tensor, plan: LargeImagePlan) -> torch.Tensor:
    """The reference must be the unpooled base grid of exactly the guide's field of view."""
    if not (isinstance(grid, torch.Tensor) or is_lazy_grid(grid)) or grid.dim() != 3:
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
    return materialize_grid(grid)  # one guide's field of view: small


def check_reference(
    pipe, reference, cdm, stages: list[LargeImagePlan], coarse_req: CoarseRequest | None
) -> torch.Tensor | None:
    """The first guide's inputs, validated before any model work (step 1 of
    :func:`~.joint.generate_large_image`): past one guide patch, the reference grid of the whole coarse
    canvas; else the reference grid of the first stage's guide, or — without a reference — the CDM's fit to
    the pipeline. Returns the reference grid (float, CPU), or None on the reference-free path."""
    plan = stages[-1]
    if coarse_req is not None:
        if reference is None:
            span = coarse_req.level.downsample // plan.target.downsample * pipe.config.image_size
            raise InputError(
                f"sizes above {span} px need a reference region covering the whole image (its SSL grid, "
                f"or an image embedded with --encoder): the coarse canvas of {coarse_req.rows}×"
                f"{coarse_req.cols} {coarse_req.level} patches is conditioned on it"
            )
        if not (isinstance(reference, torch.Tensor) or is_lazy_grid(reference)) or reference.dim() != 3:
            raise InputError(
                f"the reference must be an SSL grid [C, h, w]; got {getattr(reference, 'shape', reference)}"
            )
        check_coarse_grid(pipe, reference, coarse_req.level, coarse_req.rows, coarse_req.cols)
        return reference if is_lazy_grid(reference) else reference.float().cpu()  # a grid file stays on disk
    elif reference is not None:
        return check_reference_grid(pipe, reference, stages[0])
    elif cdm is None:
        raise InputError(
            "large images need a reference region (its SSL grid, or an image embedded with --encoder); "
            "reference-free generation needs a CDM checkpoint (--cdm)"
        )
    else:
        check_cdm_fits(pipe, cdm)
    return None


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
