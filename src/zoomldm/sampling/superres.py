"""Super-resolution via condition inversion (SPEC §5): a low-resolution image at magnification MAG → the
same field of view at the target magnification (default the base level: 5x → 20x is 4×).

1. validate: the input is a whole number of patches (256² for the published models) at ``from``;
2. condition inversion of every low-resolution patch (:mod:`.inversion`): its base grid ``F̂ [C, k, k]``;
3. constrained sampling of the target tiles with the real low-resolution image as the *fixed* constraint
   (SPEC §5.2 recommendation: §4.3 with the guide replaced by the LR tiles; the notebook's own inner loop
   cannot run), per-tile conditions from the inverted grid;
4. post-processing with the inverted grid as the tile embeddings, blended decode, metrics against the input.

**Input size.** The image is taken at its own pixel size as an image at ``from`` (what the flag says):
each ``256²`` patch of it becomes ``k × k`` target tiles, so an ``N²`` input gives ``(k·N)²`` — e.g. a 1024²
5x region → 4096² at 20x. The authors' example ``assets/lr.jpg`` is a 1024² *display copy* (4× enlarged)
of a 256² 5x input; ``resize=256`` turns it back into that input and reproduces their 1024² result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..io.images import load_lr_image  # noqa: F401 (re-exported: the reader of low-resolution inputs)
from ..scales import Magnification
from .constrained import FixedGuide, JointSamplingConfig
from .decode import DecodeConfig
from .inversion import InversionConfig, invert_conditions
from .joint import (
    LargeImageResult,
    _plan_pair,
    base_settings,
    default_decode_config,
    finish_outputs,
    render_large,
)
from .levels import parse_level
from .output import RunState, check_output_path
from .postprocess import PostprocessConfig


@dataclass
class SRConfig(JointSamplingConfig):
    """Constrained-generation settings of super-resolution: the joint-sampling ones with the notebook's
    ``n_steps = 5`` inner iterations (SPEC §5.2; t0 1000, stride 50, w 2, lr 0.5, h 0.005)."""

    inner_steps: int = 5


def _patches(image: torch.Tensor, size: int) -> torch.Tensor:
    """``[3, H, W]`` → ``[n, 3, size, size]`` row-major."""
    c, h, w = image.shape
    return (
        image.unflatten(1, (h // size, size))
        .unflatten(3, (w // size, size))
        .permute(1, 3, 0, 2, 4)
        .reshape(-1, c, size, size)
    )


def _assemble(grids: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``[rows·cols, C, g, g]`` row-major → ``[C, rows·g, cols·g]``."""
    n, c, g, _ = grids.shape
    return grids.view(rows, cols, c, g, g).permute(2, 0, 3, 1, 4).reshape(c, rows * g, cols * g)


def super_resolve(
    pipe,
    lr_image: np.ndarray,
    from_magnification: str | int | Magnification,
    *,
    to_magnification: str | int | Magnification | None = None,
    config: SRConfig | None = None,
    inversion: InversionConfig | None = None,
    postprocess: PostprocessConfig | bool | None = True,
    decode: DecodeConfig | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    region: tuple[int, int, int, int] | None = None,
    inversion_unet=None,
    live_unet=None,
    keep_in_memory: bool | None = None,
    compression: str = "jpeg",
    resume: bool = True,
    progress: bool = True,
) -> LargeImageResult:
    """Super-resolve ``lr_image`` (uint8 ``[H, W, 3]``, H and W multiples of the patch size) from
    ``from_magnification`` to ``to_magnification`` (default the base level).

    ``inversion_unet``: UNet for the inversion (default the pipeline's; the official code used the live
    weights). ``live_unet``: needed only with ``postprocess.use_live_weights``. Other arguments as
    :func:`~zoomldm.sampling.joint.generate_large_image`. The result's ``guide_image`` is the input and
    its metrics compare the downsampled output with it.
    """
    # 1. validate before any model work
    config = config or SRConfig()
    inversion = inversion or InversionConfig()
    post = PostprocessConfig() if postprocess is True else (postprocess or None)
    decode = decode or default_decode_config(pipe)
    if post is not None and post.use_live_weights and live_unet is None:
        raise ConfigError("postprocess use_live_weights needs live_unet= (the checkpoint's live UNet)")
    lr = np.asarray(lr_image)
    if lr.dtype != np.uint8 or lr.ndim != 3 or lr.shape[2] != 3:
        raise InputError(f"the low-resolution image must be uint8 RGB [H, W, 3]; got {lr.dtype} {lr.shape}")
    size = pipe.config.image_size
    if lr.shape[0] % size or lr.shape[1] % size:
        raise InputError(
            f"the low-resolution image is {lr.shape[1]}×{lr.shape[0]}; it must be a whole number of "
            f"{size}² patches at the input magnification (resize or crop it; e.g. resize=256 for the "
            "authors' 4× display copy lr.jpg)"
        )
    # the edge: each level is parsed once here; everything below takes Magnification objects
    source = parse_level(pipe, from_magnification, "input magnification")
    target = (
        parse_level(pipe, to_magnification, "target magnification")
        if to_magnification is not None
        else pipe.scales[0]
    )
    plan = _plan_pair(pipe, source, target, region=region, guide_shape=(lr.shape[0], lr.shape[1]))
    out = check_output_path(out, plan.height, plan.width, compression)
    image = torch.from_numpy(lr.copy()).permute(2, 0, 1).float() / 127.5 - 1.0  # copy: may be read-only
    rows, cols = lr.shape[0] // size, lr.shape[1] // size
    settings = base_settings(
        pipe,
        plan,
        seed,
        method="zoomldm super-resolution",
        sr=config,
        inversion=inversion,
        postprocess=post,
        decode=decode,
        input={"shape": list(lr.shape), "magnification": source.name, "sha256_16": _digest(lr)},
    )

    # 2. condition inversion of each low-resolution patch (resumable as a whole)
    state = RunState(out, settings, enabled=resume)
    saved = state.load("inversion")
    if saved is not None:
        grids = saved[1]["grids"]
    else:
        patches = _patches(image, size)
        grids = invert_conditions(
            pipe, patches, source, config=inversion, seed=seed, unet=inversion_unet, progress=progress
        ).grids
        state.save("inversion", 1, {"grids": grids})
    base_grid = _assemble(grids, rows, cols)

    # 3.–4. constrained sampling under the fixed input, post-processing, decode
    result = render_large(
        pipe,
        plan,
        base_grid=base_grid,
        guide=FixedGuide(image),
        config=config,
        postprocess=post,
        decode=decode,
        seed=seed,
        out=out,
        settings=settings,
        state=state,
        live_unet=live_unet,
        keep_in_memory=keep_in_memory,
        compression=compression,
        guide_uint8=lr,
        progress=progress,
    )
    result.metrics["inverted_grid_shape"] = list(base_grid.shape)
    return finish_outputs(result, state)


def _digest(array: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(array.tobytes()).hexdigest()[:16]
