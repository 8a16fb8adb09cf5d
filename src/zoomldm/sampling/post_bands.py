"""Out-of-core storage of post-processing (SPEC §4.5): the canvas read in rolling row bands
(:class:`_RowReader`), the noise ξ drawn by row keyed per canvas tile (:class:`_TileNoise`), and the
double-buffered zarr canvas with its record of finished steps (:class:`_PostBuffers`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .noise import keyed_normal


class _RowReader:
    """Rows ``[a, b)`` of a ``[C, H, W]`` latent (tensor, zarr array or view) with ``a`` never decreasing:
    a rolling band, each row read once per pass, memory a few window heights × the width."""

    def __init__(self, source) -> None:
        self.source, self.top, self.band = source, 0, None

    def rows(self, a: int, b: int) -> torch.Tensor:
        if self.band is None or a < self.top:
            self.top, self.band = a, _read(self.source, a, b)
        bottom = self.top + self.band.shape[1]
        if b > bottom:
            self.band = torch.cat([self.band, _read(self.source, bottom, b)], dim=1)
        if a > self.top:
            self.band = self.band[:, a - self.top :]
            self.top = a
        return self.band[:, : b - a]


def _read(source, a: int, b: int) -> torch.Tensor:
    rows = source[:, a:b, :]
    return rows.float() if isinstance(rows, torch.Tensor) else torch.from_numpy(np.asarray(rows, np.float32))


class _TileNoise:
    """Rows of the post-processing noise ``ξ``, keyed per canvas tile (global tile id, step): one tile row
    is drawn at a time, so a band never needs the canvas' noise."""

    def __init__(self, seed, stream, step, shape, tile, tiles_per_row, origin) -> None:
        self.seed, self.stream, self.step, self.shape, self.tile = seed, stream, step, shape, tile
        self.tiles_per_row, (self.row0, self.col0) = tiles_per_row, origin
        self.cached: tuple[int, torch.Tensor] | None = None

    def _tile_row(self, r: int) -> torch.Tensor:
        if self.cached is None or self.cached[0] != r:
            cols = self.shape[2] // self.tile
            ids = [(self.row0 + r) * self.tiles_per_row + self.col0 + c for c in range(cols)]
            noise = keyed_normal(
                (self.shape[0], self.tile, self.tile), self.seed, self.stream, ids, self.step
            )
            self.cached = (r, torch.cat(list(noise), dim=2))  # [C, P, W]
        return self.cached[1]

    def rows(self, a: int, b: int) -> torch.Tensor:
        parts, y = [], a
        while y < b:
            r = y // self.tile
            end = min(b, (r + 1) * self.tile)
            parts.append(self._tile_row(r)[:, y - r * self.tile : end - r * self.tile])
            y = end
        return torch.cat(parts, dim=1)


class _PostBuffers:
    """The double-buffered canvas of post-processing (zarr: ``post_0``, ``post_1`` in a folder of the run's
    state, or in memory) and its record of finished steps (empty marker files ``done/<step>``)."""

    def __init__(self, folder: Path | None, shape, key: str, fresh: bool, rows_per_chunk: int) -> None:
        import shutil

        import zarr

        self.folder = folder
        self.finished: set[int] = set()
        store = zarr.storage.MemoryStore() if folder is None else zarr.storage.LocalStore(str(folder))
        if folder is not None and folder.exists():
            try:
                root = zarr.open_group(store, mode="r+")
                if not fresh and root.attrs.get("key") == key:
                    self.root = root
                    return
            except Exception:  # noqa: BLE001 - a damaged or foreign folder is replaced
                pass
            shutil.rmtree(folder)
        root = zarr.open_group(store, mode="w")
        c, h, w = shape
        for buffer in (0, 1):
            root.create_array(
                f"post_{buffer}",
                shape=shape,
                chunks=(c, min(rows_per_chunk, h), min(w, 4096)),
                dtype="float32",
                fill_value=0.0,
                compressors=None,
            )
        root.attrs["key"] = key
        self.root = root

    def array(self, buffer: int):
        return self.root[f"post_{buffer % 2}"]

    def done_steps(self) -> int:
        """How many steps (from the first) are finished."""
        if self.folder is None:
            return len(self.finished)
        folder = self.folder / "done"
        return len(list(folder.iterdir())) if folder.is_dir() else 0

    def mark(self, step: int) -> None:
        if self.folder is None:
            self.finished.add(step)
            return
        (self.folder / "done").mkdir(parents=True, exist_ok=True)
        (self.folder / "done" / str(step)).touch()
