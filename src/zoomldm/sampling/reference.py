"""Inputs of large-image sampling as users hold them: a file path, a PIL image, a uint8 array, an SSL grid.

``ZoomLDMPipeline.generate_large(reference=…)`` and ``.super_resolve(image)`` (and through them the
``zoomldm generate`` / ``zoomldm superres`` commands) read their inputs here, so notebook and command line
share one validation. Errors are one line, name the input and say what to do (:class:`~zoomldm.errors.InputError`
for the data, :class:`~zoomldm.errors.ConfigError` for a mismatching encoder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..io.grids import SSLGridFile, check_lazy_grid, is_lazy_grid
from ..io.images import read_image  # noqa: F401 (the readers of image inputs live with the formats)
from ..models.ssl import build_ssl_encoder, default_encoder  # noqa: F401 (re-exported: the encoder rule)
from ..scales import Magnification
from ..tensorfiles import count_nonfinite

#: file suffixes read as a precomputed SSL grid (``[C, h, w]``); any other file is read as an image
GRID_SUFFIXES = {".npy", ".pt", ".pth", ".safetensors"}


def check_grid(grid: Any, channels: int, what: str = "reference grid") -> torch.Tensor:
    """An SSL grid ``[C, h, w]`` (tensor or float array) with finite values, as float32 CPU."""
    if isinstance(grid, np.ndarray):
        grid = torch.from_numpy(np.ascontiguousarray(grid))
    if not isinstance(grid, torch.Tensor) or grid.dim() != 3 or not grid.is_floating_point():
        shape = list(getattr(grid, "shape", [])) or type(grid).__name__
        raise InputError(f"{what}: expected a float SSL grid [C, h, w]; got {shape}")
    grid = grid.detach().float().cpu()
    if grid.shape[0] != channels:
        raise InputError(
            f"{what}: {grid.shape[0]} channels; this model expects {channels} (an embedding per base tile)"
        )
    bad = count_nonfinite(grid)
    if bad:
        raise InputError(
            f"{what}: {bad} non-finite values (NaN/inf) in the SSL embeddings; recompute the grid"
        )
    return grid


def read_reference(reference: Any, channels: int) -> torch.Tensor | np.ndarray | SSLGridFile:
    """The reference as given, without model work: an SSL grid (float ``[C, h, w]`` tensor, or a ``[C, h,
    w]`` .npy / .safetensors file kept on disk and read by block: :class:`~zoomldm.io.grids.SSLGridFile`)
    or a uint8 ``[H, W, 3]`` image still to be embedded. Paths ending in .npy/.pt/.pth/.safetensors are
    grids."""
    from ..conditioning import load_ssl_grid

    if isinstance(reference, str | Path):
        path = Path(reference)
        if not path.is_file():
            raise InputError(
                f"{path}: reference not found (give an image of the region or its SSL grid file)"
            )
        if path.suffix.lower() in GRID_SUFFIXES:
            lazy = SSLGridFile.open(path)  # [C, h, w] .npy / .safetensors: read by block, never whole
            if lazy is not None:
                return check_lazy_grid(lazy, channels, path.name)
            return check_grid(load_ssl_grid(path, channels=channels), channels, path.name)
        return read_image(path, what=path.name)
    if isinstance(reference, torch.Tensor) or (
        isinstance(reference, np.ndarray) and reference.dtype != np.uint8
    ):
        return check_grid(reference, channels)
    return read_image(reference, what="reference")


def reference_side(reference: torch.Tensor | np.ndarray, tile: int) -> int | None:
    """Base tiles per side of a square reference (None when not square or not whole tiles)."""
    grid = isinstance(reference, torch.Tensor) or is_lazy_grid(reference)
    h, w = reference.shape[1:] if grid else reference.shape[:2]
    if isinstance(reference, np.ndarray):
        if h % tile or w % tile:
            return None
        h, w = h // tile, w // tile
    return int(h) if h == w else None


def embed_reference(
    pipe,
    image: np.ndarray,
    guide: Magnification,
    encoder: Any,
    weights: Any,
    what: str = "reference",
    patches: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """The unpooled SSL grid ``[C, n, n]`` of a region image at base resolution under ``patches`` (rows,
    cols) ``guide`` patches: one, or a coarse canvas of several (:mod:`.coarse`; the image is then held whole:
    for a whole slide give its grid file, read by block)."""
    from ..models.encoders import encode_region_grid

    tile = pipe.config.image_size
    side = guide.grid_size * tile
    want = (patches[0] * side, patches[1] * side)
    if image.shape[:2] != want:
        under = (
            f"a {guide} guide"
            if patches == (1, 1)
            else f"a coarse canvas of {patches[0]}×{patches[1]} {guide} patches"
        )
        region = f"{want[0]}²" if want[0] == want[1] else f"{want[1]}×{want[0]}"
        raise InputError(
            f"{what} is {image.shape[1]}×{image.shape[0]}; {under} needs the {region} region at "
            f"{pipe.scales[0]} under it (one SSL embedding per {tile}² tile)"
        )
    if encoder is None:
        encoder = default_encoder(pipe)
    enc = build_ssl_encoder(encoder, weights, pipe.device, pipe.config.ssl_channels)
    return encode_region_grid(enc, image, tile=tile).float().cpu()
