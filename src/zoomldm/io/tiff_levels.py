"""The pyramid of a streamed TIFF (:class:`~.tiff.PyramidalTiffWriter`), built as rows arrive: the tiles of
a band of rows, the 2× box reduction, and the reduced levels spooled to raw files until they are written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import ZoomLDMError


def _band_tiles(band: np.ndarray, tile_size: int) -> Iterator[np.ndarray]:
    """The tiles of one band of rows, left to right; edge tiles are padded by repeating the edge pixels
    (zero padding would put a black border inside JPEG blocks and bleed into the visible edge)."""
    for x in range(0, band.shape[1], tile_size):
        tile = band[:, x : x + tile_size]
        if tile.shape[0] != tile_size or tile.shape[1] != tile_size:
            pad = ((0, tile_size - tile.shape[0]), (0, tile_size - tile.shape[1]), (0, 0))
            tile = np.pad(tile, pad, mode="edge")
        yield np.ascontiguousarray(tile)


def _halve(rows: np.ndarray) -> np.ndarray:
    """2×2 box average of an even number of rows (odd width: the last column is averaged with itself)."""
    if rows.shape[1] % 2:
        rows = np.concatenate([rows, rows[:, -1:]], axis=1)
    n, w = rows.shape[0] // 2, rows.shape[1] // 2
    blocks = rows.reshape(n, 2, w, 2, rows.shape[2]).astype(np.uint16)
    return ((blocks.sum(axis=(1, 3)) + 2) // 4).astype(np.uint8)


class _Spool:
    """One reduced level's rows in a raw file beside the output: appended as they are reduced, read back one
    band at a time. Plain file I/O, not a memory map: written pages stay in the kernel's page cache and
    never count in this process's resident memory (a memory map's pages do, so a mapped spool grew the
    resident set with the image: 312 MiB more for a 16384² image, against O(width) now)."""

    def __init__(self, tmp_path: Path, height: int, width: int) -> None:
        # a scratch file in the writer's temporary folder, removed with it (not a result file)
        self.path, self.shape = tmp_path, (height, width, 3)
        self.row_bytes = width * 3
        self.file = open(tmp_path, "w+b")  # noqa: SIM115 (closed by close(), called by the writer's cleanup)
        self.rows = 0

    def append(self, rows: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(rows, dtype=np.uint8).data)
        self.rows += rows.shape[0]

    def read(self, y: int, n: int) -> np.ndarray:
        n = min(n, self.shape[0] - y)
        out = np.empty((n, *self.shape[1:]), np.uint8)
        self.file.flush()
        self.file.seek(y * self.row_bytes)
        if self.file.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise ZoomLDMError(f"{self.path}: the level spool is shorter than written (was it removed?)")
        self.file.seek(0, os.SEEK_END)
        return out

    def close(self) -> None:
        self.file.close()


class _Reducer:
    """Builds one reduced level from the rows of the level above, as they arrive, into a spool file."""

    def __init__(self, store: _Spool) -> None:
        self.store = store
        self.pending: np.ndarray | None = None  # an odd row left over from the previous chunk

    def push(self, rows: np.ndarray) -> np.ndarray:
        """Add rows of the level above; return the reduced rows completed by them (also stored)."""
        if self.pending is not None:
            rows = np.concatenate([self.pending, rows])
            self.pending = None
        if rows.shape[0] % 2:
            self.pending, rows = rows[-1:].copy(), rows[:-1]
        return self._store(_halve(rows)) if rows.shape[0] else self._empty()

    def finish(self) -> np.ndarray:
        """After the last row: an odd row left over is averaged with itself (the height rounds up)."""
        if self.pending is None:
            return self._empty()
        last, self.pending = np.concatenate([self.pending, self.pending]), None
        return self._store(_halve(last))

    def _empty(self) -> np.ndarray:
        return np.zeros((0, *self.store.shape[1:]), np.uint8)

    def _store(self, reduced: np.ndarray) -> np.ndarray:
        self.store.append(reduced)
        return reduced
