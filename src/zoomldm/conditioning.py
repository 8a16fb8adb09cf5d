"""SSL embedding grids: reading them from files and preparing them for the Summarizer (SPEC §1.3-1.4).

``prepare_grid`` is the exact training-time order: adaptive average pooling to at most 8×8 (an exact
block mean for power-of-two grids), **then** per-token standardisation across channels with the
unbiased std and ``+1e-8``. The official loader does this in float16; we compute in float32 (the grid
is then handed to the Summarizer in its own dtype) — the difference is below float16 resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError, ZoomLDMError
from .tensorfiles import check_input_file, count_nonfinite, first_line, load_safetensors, load_torch


def standardize_tokens(grid: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-token standardisation over the channel dim 0 of ``[C, h, w]`` (unbiased std + eps)."""
    g = grid.float()
    return (g - g.mean(dim=0, keepdim=True)) / (g.std(dim=0, keepdim=True) + eps)


def pool_grid(grid: torch.Tensor, target_size: int = 8) -> torch.Tensor:
    """Average-pool ``[C, h, w]`` so that neither side exceeds ``target_size``."""
    h, w = grid.shape[-2:]
    if h <= target_size and w <= target_size:
        return grid
    return F.adaptive_avg_pool2d(grid[None].float(), (min(h, target_size), min(w, target_size)))[0]


def prepare_grid(grid: torch.Tensor, target_size: int = 8, normalize: bool = True) -> torch.Tensor:
    """Training-time conditioning of a raw grid: pool to ≤ ``target_size``², then standardise."""
    if grid.dim() == 1:
        grid = grid[:, None, None]
    if grid.dim() != 3:
        raise ZoomLDMError(f"an SSL grid must be [C, h, w]; got shape {tuple(grid.shape)}")
    g = pool_grid(grid.float(), target_size)
    return standardize_tokens(g) if normalize else g


def load_ssl_grid(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """Read an SSL grid from ``.npy``, ``.pt``/``.pth`` or ``.safetensors`` as ``[C, h, w]`` float32.

    Accepted layouts: ``[C, h, w]``; ``[C]`` (one 20x tile); the authors' ``[C, N]`` (BRCA, channels
    first) and ``[N, C]`` (NAIP) with N a square; ``[1, C, h, w]``. With ``channels`` given, a 2-D array is
    oriented by it and a mismatch is an error that names the expected size.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in {".npy", ".pt", ".pth", ".safetensors"}:
        if not path.exists():
            raise InputError(f"SSL grid file not found: {path}")
        raise InputError(f"unsupported SSL grid file {path.name}; use .npy, .pt or .safetensors")
    check_input_file(path, "SSL grid", InputError)
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as err:  # ValueError (pickled objects, bad header), EOFError, OSError
            raise InputError(
                f"{path}: truncated or not a NumPy .npy array ({first_line(err)}); recompute the grid"
            ) from err
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
            raise InputError(f"{path}: expected a numeric array, found dtype {getattr(array, 'dtype', '?')}")
        arr = torch.from_numpy(array.astype(np.float32, copy=False))
    elif suffix in {".pt", ".pth"}:
        arr = _single_tensor(load_torch(path, "PyTorch tensor file", InputError), path)
    else:
        arr = _single_tensor(load_safetensors(path, "safetensors file", InputError), path)
    if arr.is_complex() or arr.dtype == torch.bool:
        raise InputError(f"{path}: expected real-valued embeddings, found dtype {arr.dtype}")
    arr = arr.float()
    if arr.dim() == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.dim() == 1:
        arr = arr[:, None, None]
    elif arr.dim() == 2:
        a, b = arr.shape
        if channels is not None and channels not in (a, b):
            raise ZoomLDMError(
                f"{path.name}: array of shape {[a, b]} has no axis of {channels} channels; the model expects "
                f"{channels} (one embedding of its SSL encoder per 256² base tile)"
            )
        channels_first = channels == a if channels is not None else a > b
        if not channels_first:
            arr = arr.t()
        n = arr.shape[1]
        side = int(round(n**0.5))
        if side * side != n:
            raise ZoomLDMError(f"{path.name}: {n} tokens do not form a square grid; save it as [C, h, w]")
        arr = arr.reshape(arr.shape[0], side, side)
    if arr.dim() != 3:
        raise ZoomLDMError(f"{path.name}: expected an SSL grid [C, h, w]; got shape {tuple(arr.shape)}")
    if arr.numel() == 0:
        raise InputError(f"{path.name}: the SSL grid is empty (shape {tuple(arr.shape)}); recompute the grid")
    if channels is not None and arr.shape[0] != channels:
        raise ZoomLDMError(
            f"{path.name}: grid has {arr.shape[0]} channels, the model expects {channels} "
            "(one embedding of its SSL encoder per 256² base tile)"
        )
    bad = count_nonfinite(arr)
    if bad:
        raise InputError(
            f"{path.name}: {bad} non-finite values (NaN/inf) in the SSL embeddings; recompute the grid"
        )
    return arr.contiguous()


def _single_tensor(obj: object, path: Path) -> torch.Tensor:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        for key in ("ssl_feat", "ssl_feat_unpooled", "grid", "features"):
            if isinstance(obj.get(key), torch.Tensor):
                return obj[key]
        if len(tensors) == 1:
            return tensors[0]
    raise ZoomLDMError(
        f"{path.name}: expected one tensor (or a key 'ssl_feat' / 'grid'), found {type(obj).__name__}"
    )
