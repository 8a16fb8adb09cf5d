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

from ..errors import ConfigError, InputError
from ..scales import Magnification
from ..tensorfiles import count_nonfinite

#: file suffixes read as a precomputed SSL grid (``[C, h, w]``); any other file is read as an image
GRID_SUFFIXES = {".npy", ".pt", ".pth", ".safetensors"}


def _name(value: Any) -> str:
    return Path(value).name if isinstance(value, str | Path) else "the image"


def read_image(value: Any, resize: int | None = None, what: str = "image") -> np.ndarray:
    """A path, PIL image or uint8 ``[H, W, 3]`` array → uint8 ``[H, W, 3]`` (optionally Lanczos-resampled to
    ``resize``² pixels, as ``--resize``)."""
    from PIL import Image

    from .superres import load_lr_image

    if isinstance(value, str | Path):
        return load_lr_image(value, resize)  # the one reader of image files (missing/damaged: InputError)
    if isinstance(value, Image.Image):
        image = value.convert("RGB")
    elif isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] != 3 or 0 in value.shape:
            raise InputError(
                f"{what}: expected a uint8 RGB array [H, W, 3]; got {value.dtype} {list(value.shape)} "
                "(convert with np.asarray(PIL.Image.open(path).convert('RGB')))"
            )
        if resize is None:
            return value
        image = Image.fromarray(value)
    else:
        raise InputError(
            f"{what}: expected a file path, a PIL image or a uint8 [H, W, 3] array; got {type(value).__name__}"
        )
    if resize is not None:
        if resize < 1:
            raise InputError(f"resize must be a positive size in pixels; got {resize}")
        image = image.resize((resize, resize), Image.LANCZOS)
    return np.asarray(image).copy()


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


def read_reference(reference: Any, channels: int) -> torch.Tensor | np.ndarray:
    """The reference as given, without model work: an SSL grid (float ``[C, h, w]`` tensor) or a uint8
    ``[H, W, 3]`` image still to be embedded. Paths ending in .npy/.pt/.pth/.safetensors are grids."""
    from ..conditioning import load_ssl_grid

    if isinstance(reference, str | Path):
        path = Path(reference)
        if not path.is_file():
            raise InputError(
                f"{path}: reference not found (give an image of the region or its SSL grid file)"
            )
        if path.suffix.lower() in GRID_SUFFIXES:
            return check_grid(load_ssl_grid(path, channels=channels), channels, path.name)
        return read_image(path, what=path.name)
    if isinstance(reference, torch.Tensor) or (
        isinstance(reference, np.ndarray) and reference.dtype != np.uint8
    ):
        return check_grid(reference, channels)
    return read_image(reference, what="reference")


def reference_side(reference: torch.Tensor | np.ndarray, tile: int) -> int | None:
    """Base tiles per side of a square reference (None when not square or not whole tiles)."""
    h, w = reference.shape[1:] if isinstance(reference, torch.Tensor) else reference.shape[:2]
    if isinstance(reference, np.ndarray):
        if h % tile or w % tile:
            return None
        h, w = h // tile, w // tile
    return int(h) if h == w else None


def default_encoder(checkpoint: Any) -> str:
    """The SSL encoder a model's references are embedded with when none is named: the embedded offline
    model's own encoder for that model (its Summarizer was trained on its 64-d grids), UNI otherwise.
    ``checkpoint``: the checkpoint id/path, or a pipeline (its provenance names where it was loaded from)."""
    from ..models.embedded import EMBEDDED, is_embedded

    if hasattr(checkpoint, "provenance"):
        checkpoint = checkpoint.provenance.get("checkpoint")
    return EMBEDDED if is_embedded(checkpoint) else "uni"


def build_ssl_encoder(encoder: Any, weights: str | Path | None, device: Any, channels: int):
    """``encoder``: a name (``uni``, ``dinov2``, ``timm:<name>``, ``embedded``: the embedded offline model's
    own; ``weights`` a local file or ``"random"``) or an encoder object with ``.dim`` and ``.embed``
    (:class:`~zoomldm.data.encoders.SSLEncoder`)."""
    from ..data.encoders import build_encoder
    from ..models.embedded import EMBEDDED, embedded_encoder

    if encoder == EMBEDDED and weights is None:
        encoder = embedded_encoder(str(device))
    elif isinstance(encoder, str):
        if weights not in (None, "random") and not Path(weights).is_file():
            raise InputError(f"{weights}: encoder weights not found (pass the local weights file)")
        encoder = build_encoder(encoder, weights=weights, device=device)
    elif not (hasattr(encoder, "dim") and hasattr(encoder, "embed")):
        raise ConfigError(
            f"encoder must be a name (uni, dinov2, timm:<name>) or an SSL encoder; got {type(encoder).__name__}"
        )
    if encoder.dim != channels:
        name = getattr(encoder, "name", type(encoder).__name__)
        raise ConfigError(f"encoder {name} gives {encoder.dim}-d embeddings, the model expects {channels}")
    return encoder


def embed_reference(
    pipe, image: np.ndarray, guide: Magnification, encoder: Any, weights: Any, what: str = "reference"
) -> torch.Tensor:
    """The unpooled SSL grid ``[C, n, n]`` of a region image at base resolution under a ``guide`` patch."""
    from ..data.encoders import encode_region_grid

    tile = pipe.config.image_size
    side = guide.grid_size * tile
    if image.shape[:2] != (side, side):
        raise InputError(
            f"{what} is {image.shape[1]}×{image.shape[0]}; a {guide} guide needs the {side}² region at "
            f"{pipe.scales[0]} under it (one SSL embedding per {tile}² tile)"
        )
    if encoder is None:
        encoder = default_encoder(pipe)
    enc = build_ssl_encoder(encoder, weights, pipe.device, pipe.config.ssl_channels)
    return encode_region_grid(enc, image, tile=tile).float().cpu()
