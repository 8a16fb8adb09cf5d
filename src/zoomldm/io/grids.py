"""SSL grids too large to hold: a ``[C, h, w]`` grid in a file, read by block (issue 24).

A whole 20x slide has 200k–260k base tiles: its UNI grid is 1 GiB in float32 and a 131072² request holds
it. :class:`SSLGridFile` keeps such a grid on disk and reads the box a caller slices out of it, so that host
memory holds one block's grid at a time:

* ``.npy`` (C-order ``[C, h, w]`` or ``[1, C, h, w]``, any real dtype): the file is memory-mapped **per
  read** and unmapped after it. A mapping kept open would leave every page the run touched resident — the
  whole grid, in ``ru_maxrss`` too — while an unmapped page is the page cache's, not the process's.
* ``.safetensors`` (one tensor, or the keys :func:`zoomldm.conditioning.load_ssl_grid` knows): read through
  ``safe_open(...).get_slice``, also opened per read, for the same reason.

Slicing (``grid[:, r0:r1, c0:c1]``) returns a float32 CPU tensor, so code written for tensors reads
blocks from either; :meth:`SSLGridFile.view` is a lazily read window (a region's grid). ``.pt`` files and
other layouts (``[C, N]``, ``[N, C]``) are read whole by :func:`~zoomldm.conditioning.load_ssl_grid`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError

__all__ = ["GridView", "SSLGridFile", "crop_grid", "grid_digest", "is_lazy_grid", "materialize_grid"]

#: bytes of one band read when a whole grid is scanned (validation, digest)
SCAN_BYTES = 64 * 2**20
#: safetensors keys tried, in order, when a file holds several tensors (as load_ssl_grid)
_KEYS = ("ssl_feat", "ssl_feat_unpooled", "grid", "features")


def _norm(key: Any, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``key`` as three slices of non-negative bounds (ints select one index, kept as a length-1 slice)."""
    if not isinstance(key, tuple):
        key = (key,)
    key = key + (slice(None),) * (3 - len(key))
    out = []
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, int):
            k = slice(k, k + 1) if k >= 0 else slice(n + k, n + k + 1)
        if not isinstance(k, slice) or k.step not in (None, 1):
            raise TypeError(f"an SSL grid file is read by contiguous boxes; got index {k!r}")
        a, b, _ = k.indices(n)
        out.append(slice(a, max(a, b)))
    return tuple(out)


class _LazyGrid:
    """What both lazily read grids share: ``shape`` (set by the subclass), slicing by box (the
    subclass's ``__getitem__``) and the tensor methods callers use, which return the grid itself."""

    shape: torch.Size

    def dim(self) -> int:
        return 3

    def float(self):
        return self

    def cpu(self):
        return self

    def bands(self) -> Iterator[torch.Tensor]:
        """The grid by channel bands of at most :data:`SCAN_BYTES` (C-order: their bytes concatenate to
        the grid's)."""
        C, h, w = self.shape
        per = max(1, SCAN_BYTES // max(h * w * 4, 1))
        for c in range(0, C, per):
            yield self[c : c + per]


class SSLGridFile(_LazyGrid):
    """A ``[C, h, w]`` SSL grid in a ``.npy`` or ``.safetensors`` file, read by box (module docstring).

    Behaves as a read-only float32 tensor for slicing, ``shape``, ``dim()``, ``float()`` and ``cpu()``
    (both return the grid itself, still on disk)."""

    def __init__(self, path: str | Path, *, key: str | None = None, squeeze: bool = False) -> None:
        self.path = Path(path)
        self.key, self.squeeze = key, squeeze
        self.suffix = self.path.suffix.lower()
        with self._open() as array:
            raw = array.shape if hasattr(array, "shape") else array.get_shape()
            shape = tuple(int(v) for v in raw)
        self.shape = torch.Size(shape[1:] if squeeze else shape)

    @classmethod
    def open(cls, path: str | Path) -> SSLGridFile | None:
        """The grid in ``path`` read lazily, or None when its format or layout is one that
        :func:`~zoomldm.conditioning.load_ssl_grid` reads whole (``.pt``, 2-D layouts, a non-numeric array)."""
        path = Path(path)
        suffix = path.suffix.lower()
        try:
            if suffix == ".npy":
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                ok = array.dtype.kind in "iuf" and array.flags.c_contiguous
                shape = array.shape
                del array
                key = None
            elif suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:
                    keys = list(f.keys())
                    key = next((k for k in _KEYS if k in keys), keys[0] if len(keys) == 1 else None)
                    if key is None:
                        return None
                    shape = tuple(f.get_slice(key).get_shape())
                    ok = f.get_slice(key).get_dtype() in ("F16", "BF16", "F32", "F64")
            else:
                return None
        except Exception:  # noqa: BLE001 - damaged files get load_ssl_grid's one-line message
            return None
        if not ok:
            return None
        if len(shape) == 4 and shape[0] == 1:
            return cls(path, key=key, squeeze=True)
        return cls(path, key=key) if len(shape) == 3 else None

    # -- reading ------------------------------------------------------------------------------------
    def _open(self):
        return _Reader(self.path, self.suffix, self.key)

    def __getitem__(self, key: Any) -> torch.Tensor:
        c, r, w = _norm(key, tuple(self.shape))
        with self._open() as array:
            box = array[0, c, r, w] if self.squeeze else array[c, r, w]
            if isinstance(box, np.ndarray):
                return torch.from_numpy(np.array(box, dtype=np.float32))  # a copy: the map can go
            return box.float().clone()

    def view(self, r0: int, r1: int, c0: int, c1: int) -> GridView:
        """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of the grid, read lazily."""
        return GridView(self, r0, r1, c0, c1)

    def __repr__(self) -> str:
        return f"SSLGridFile({str(self.path)!r}, shape={list(self.shape)})"


class GridView(_LazyGrid):
    """A lazily read ``[C, r1 − r0, c1 − c0]`` window of a grid (tensor or :class:`SSLGridFile`)."""

    def __init__(self, grid: Any, r0: int, r1: int, c0: int, c1: int) -> None:
        self.grid, self.r0, self.c0 = grid, r0, c0
        self.shape = torch.Size((int(grid.shape[0]), r1 - r0, c1 - c0))

    def __getitem__(self, key: Any) -> torch.Tensor:
        c, r, w = _norm(key, tuple(self.shape))
        rs = slice(self.r0 + r.start, self.r0 + r.stop)
        ws = slice(self.c0 + w.start, self.c0 + w.stop)
        return self.grid[c, rs, ws]

    def view(self, r0: int, r1: int, c0: int, c1: int) -> GridView:
        return GridView(self.grid, self.r0 + r0, self.r0 + r1, self.c0 + c0, self.c0 + c1)


class _Reader:
    """One mapping of the file for one read (a context manager; unmapped on exit)."""

    def __init__(self, path: Path, suffix: str, key: str | None) -> None:
        self.path, self.suffix, self.key = path, suffix, key
        self._handle: Any = None

    def __enter__(self):
        if self.suffix == ".npy":
            self._handle = np.load(self.path, mmap_mode="r", allow_pickle=False)
            return self._handle
        from safetensors import safe_open

        self._handle = safe_open(str(self.path), framework="pt")
        self._ctx = self._handle.__enter__()
        return self._ctx.get_slice(self.key)

    def __exit__(self, *exc: Any) -> None:
        # the mapping is released when its last array goes: at the end of the caller's read (CPython frees
        # it at once; the box read was copied out)
        if self.suffix != ".npy":
            self._handle.__exit__(*exc)
        self._handle = None


def is_lazy_grid(grid: Any) -> bool:
    """Whether ``grid`` is read from disk by block (:class:`SSLGridFile` or :class:`GridView`)."""
    return isinstance(grid, _LazyGrid)


def materialize_grid(grid: Any) -> torch.Tensor:
    """The whole grid as a float32 CPU tensor (for the small grids of one guide's field of view)."""
    if is_lazy_grid(grid):
        return grid[:, :, :]
    return grid.float().cpu()


def crop_grid(grid: Any, r0: int, r1: int, c0: int, c1: int) -> Any:
    """Rows ``[r0, r1)``, columns ``[c0, c1)`` of a grid: a tensor slice, or a lazy view of a file's."""
    if is_lazy_grid(grid):
        return grid.view(r0, r1, c0, c1)
    return grid[:, r0:r1, c0:c1]


def grid_digest(grid: Any) -> str:
    """First 16 hex digits of the sha256 of the grid's float32 C-order bytes (read by bands when lazy)."""
    digest = hashlib.sha256()
    if is_lazy_grid(grid):
        for band in grid.bands():
            digest.update(band.contiguous().numpy().tobytes())
    else:
        digest.update(grid.float().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def count_nonfinite_lazy(grid: Any) -> int:
    """NaN / ±inf entries of a lazily read grid, scanned band by band."""
    return sum(int((~torch.isfinite(band)).sum()) for band in grid.bands())


def check_lazy_grid(grid: SSLGridFile, channels: int, what: str) -> SSLGridFile:
    """The checks :func:`zoomldm.sampling.reference.check_grid` makes, band by band."""
    if grid.shape[0] != channels:
        raise InputError(
            f"{what}: {grid.shape[0]} channels; this model expects {channels} (an embedding per base tile)"
        )
    if 0 in tuple(grid.shape):
        raise InputError(f"{what}: the SSL grid is empty (shape {list(grid.shape)}); recompute the grid")
    bad = count_nonfinite_lazy(grid)
    if bad:
        raise InputError(
            f"{what}: {bad} non-finite values (NaN/inf) in the SSL embeddings; recompute the grid"
        )
    return grid
