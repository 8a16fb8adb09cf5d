"""The out-of-core tile canvas of large-image sampling: zarr v3 arrays chunked by canvas block.

Joint sampling denoises the tiles of a canvas block by block (:func:`.constrained.batch_rows`: a tile batch
is a ``bh × bw`` block, :func:`.constrained.block_shape`). The canvas keeps every tile latent on disk, in
a zarr v3 group, so that host memory holds only the blocks in flight whatever the image size::

    <state folder>/<stage>joint.zarr/
        zarr.json                 attrs: fingerprint (settings + layout), layout
        latent_0/, latent_1/      [C, rows·P, cols·P] float32, chunk = one block (C, bh·P, bw·P)
        guide_pixels/             a fixed guide [H, W, 3] uint8 (cascades), chunk = a block's footprint
        done/<step>/<block>       empty marker files: block finished in that step
        guide/<step>.safetensors  the sampled guide latent at the start of <step> (one patch)

**Double buffer.** Step ``s`` reads the tiles from ``latent_{s % 2}`` (step 0: the keyed initial noise,
never stored) and writes ``latent_{(s+1) % 2}``. A block's chunk is written before its marker, so a run
killed at any point finds every marked block whole in the buffer of the next step and every unmarked one
unchanged in the buffer of its step: it resumes from the last finished block of the last step
(:meth:`TileCanvas.resume_point`) and, because the noise is keyed by tile and step, gives the same image
bit for bit. Saving after a block writes that block's chunk and one empty file: O(blocks changed).

Without an output file (images ≤ ``MAX_IN_MEMORY_PIXELS``) the same code runs on an in-memory zarr store.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from ..errors import ConfigError
from ..fsutil import atomic_path
from .distributed import barrier, rank_world

__all__ = ["BlockLayout", "LatentView", "TileCanvas", "pixel_array"]


@dataclass(frozen=True)
class BlockLayout:
    """A canvas of ``rows × cols`` tiles of ``latent`` px (``channels`` deep) in ``bh × bw`` blocks."""

    rows: int
    cols: int
    bh: int
    bw: int
    channels: int
    latent: int

    @property
    def block_cols(self) -> int:
        return math.ceil(self.cols / self.bw)

    @property
    def block_rows(self) -> int:
        return math.ceil(self.rows / self.bh)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape: the canvas padded to whole blocks, so that writing a block (an edge block too)
        writes a complete chunk — never a read-modify-write of a chunk a killed run may have cut short."""
        return self.channels, self.block_rows * self.bh * self.latent, self.block_cols * self.bw * self.latent

    @property
    def chunks(self) -> tuple[int, int, int]:
        return self.channels, self.bh * self.latent, self.bw * self.latent

    def block_of(self, tile_id: int) -> int:
        """Row-major index of the block holding tile ``tile_id``."""
        r, c = divmod(int(tile_id), self.cols)
        return (r // self.bh) * self.block_cols + c // self.bw


class LatentView:
    """A read-only ``[C, h, w]`` window of a canvas array (a region request's tiles), sliceable like a
    tensor: :func:`.decode.decode_large_to` reads it window by window, never whole."""

    def __init__(self, array: zarr.Array, y0: int, x0: int, height: int, width: int) -> None:
        self.array, self.y0, self.x0 = array, y0, x0
        self.shape = (int(array.shape[0]), height, width)

    def __getitem__(self, key: Any) -> np.ndarray:
        c, ys, xs = key
        y0, y1, _ = ys.indices(self.shape[1])
        x0, x1, _ = xs.indices(self.shape[2])
        return self.array[c, self.y0 + y0 : self.y0 + y1, self.x0 + x0 : self.x0 + x1]

    def to_tensor(self) -> torch.Tensor:
        """The whole view in memory (float32 CPU) — O(image): only for images kept in memory."""
        return torch.from_numpy(np.ascontiguousarray(self[:, :, :]))


def _store(folder: Path | None) -> Any:
    if folder is None:
        return zarr.storage.MemoryStore()
    return zarr.storage.LocalStore(str(folder))


def pixel_array(group: zarr.Group, name: str, height: int, width: int, chunk: int) -> zarr.Array:
    """A uint8 ``[H, W, 3]`` image array in ``group`` (chunk ``chunk²`` pixels), e.g. a cascade stage's
    output written row band by row band and read back per block footprint as the next stage's guide."""
    return group.create_array(
        name,
        shape=(height, width, 3),
        chunks=(min(chunk, height), min(chunk, width), 3),
        dtype="uint8",
        fill_value=0,
        overwrite=True,
    )


class TileCanvas:
    """Tile latents of one sampling stage in a zarr v3 group (module docstring), with the per-step record
    of finished blocks and the sampled guide's per-step latent.

    Open with :meth:`open`; ``folder=None`` keeps everything in memory (same code). Several processes may
    share a folder (multi-GPU runs): rank 0 creates or wipes it, the others wait and open it, and every rank
    writes only its own blocks' chunks and markers.
    """

    def __init__(self, root: zarr.Group, layout: BlockLayout, folder: Path | None) -> None:
        self.root, self.layout, self.folder = root, layout, folder
        self._done: dict[int, set[int]] = {}  # in-memory record (folder None)
        self._guides: dict[int, torch.Tensor] = {}

    # -- creation -----------------------------------------------------------------------------------
    @classmethod
    def open(
        cls, folder: Path | None, layout: BlockLayout, fingerprint: str, *, fresh: bool = False
    ) -> TileCanvas:
        """Open the canvas in ``folder`` when it was made with the same ``fingerprint`` (settings) and
        layout, else (or with ``fresh``) start an empty one there."""
        key = json.dumps({"fingerprint": fingerprint, "layout": asdict(layout)}, sort_keys=True)
        rank, world = rank_world()
        if folder is not None and world > 1:
            if rank == 0:
                cls._prepare(folder, layout, key, fresh)
            barrier()
            return cls(zarr.open_group(_store(folder), mode="r+"), layout, folder)
        if folder is None and world > 1:
            raise ConfigError(
                "a multi-process run needs an output file on storage all processes share (out=…)"
            )
        return cls(cls._prepare(folder, layout, key, fresh), layout, folder)

    @staticmethod
    def _prepare(folder: Path | None, layout: BlockLayout, key: str, fresh: bool) -> zarr.Group:
        if folder is not None and folder.exists():
            try:
                root = zarr.open_group(_store(folder), mode="r+")
                if not fresh and root.attrs.get("key") == key:
                    return root
            except Exception:  # noqa: BLE001 - a damaged or foreign folder is replaced, never trusted
                pass
            shutil.rmtree(folder)
        root = zarr.open_group(_store(folder), mode="w")
        for buffer in (0, 1):
            root.create_array(
                f"latent_{buffer}",
                shape=layout.shape,
                chunks=layout.chunks,
                dtype="float32",
                fill_value=0.0,
                compressors=None,  # latents hardly compress; chunk I/O stays a plain copy
            )
        root.attrs["key"] = key
        return root

    # -- tiles -------------------------------------------------------------------------------------
    def latent(self, buffer: int) -> zarr.Array:
        """The latent array of ``buffer`` (0 or 1)."""
        return self.root[f"latent_{buffer % 2}"]

    def _box(self, ids: Sequence[int]) -> tuple[int, int, int, int]:
        rc = [divmod(int(t), self.layout.cols) for t in ids]
        rows, cols = [r for r, _ in rc], [c for _, c in rc]
        return min(rows), max(rows) + 1, min(cols), max(cols) + 1

    def read_tiles(self, buffer: int, ids: Sequence[int]) -> torch.Tensor:
        """Tiles ``ids`` as ``[n, C, P, P]`` float32 (CPU): one read of their bounding box."""
        P = self.layout.latent
        r0, r1, c0, c1 = self._box(ids)
        box = self.latent(buffer)[:, r0 * P : r1 * P, c0 * P : c1 * P]
        out = []
        for t in ids:
            r, c = divmod(int(t), self.layout.cols)
            y, x = (r - r0) * P, (c - c0) * P
            out.append(box[:, y : y + P, x : x + P])
        return torch.from_numpy(np.stack(out))

    def write_tiles(self, buffer: int, ids: Sequence[int], tiles: torch.Tensor) -> None:
        """Write ``tiles`` ``[n, C, P, P]`` at ``ids``: one write of their bounding box when they fill it
        (a whole block: exactly its chunk), else tile by tile."""
        P = self.layout.latent
        array = self.latent(buffer)
        values = tiles.detach().to(device="cpu", dtype=torch.float32).numpy()
        r0, r1, c0, c1 = self._box(ids)
        if (r1 - r0) * (c1 - c0) == len(set(ids)) == len(ids):
            lay = self.layout
            if r0 % lay.bh == 0 and c0 % lay.bw == 0 and r1 == min(r0 + lay.bh, lay.rows):
                if c1 == min(c0 + lay.bw, lay.cols):  # a whole (edge-clipped) block: its padded chunk
                    r1, c1 = r0 + lay.bh, c0 + lay.bw
            box = np.zeros((values.shape[1], (r1 - r0) * P, (c1 - c0) * P), np.float32)
            for t, v in zip(ids, values, strict=True):
                r, c = divmod(int(t), self.layout.cols)
                box[:, (r - r0) * P : (r - r0 + 1) * P, (c - c0) * P : (c - c0 + 1) * P] = v
            array[:, r0 * P : r1 * P, c0 * P : c1 * P] = box
            return
        for t, v in zip(ids, values, strict=True):
            r, c = divmod(int(t), self.layout.cols)
            array[:, r * P : (r + 1) * P, c * P : (c + 1) * P] = v

    def view(self, buffer: int, row0: int, col0: int, rows: int, cols: int) -> LatentView:
        """The ``rows × cols`` tiles from tile ``(row0, col0)`` as a lazily read ``[C, h, w]`` latent."""
        P = self.layout.latent
        return LatentView(self.latent(buffer), row0 * P, col0 * P, rows * P, cols * P)

    # -- record of finished blocks -------------------------------------------------------------------
    def _done_dir(self, step: int) -> Path:
        assert self.folder is not None
        return self.folder / "done" / f"{step:05d}"

    def mark_done(self, step: int, block: int) -> None:
        """Record ``block`` as finished in ``step`` (after its chunk is written)."""
        if self.folder is None:
            self._done.setdefault(step, set()).add(block)
            return
        folder = self._done_dir(step)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / str(block)).touch()

    def done(self, step: int) -> set[int]:
        """The blocks finished in ``step``."""
        if self.folder is None:
            return set(self._done.get(step, set()))
        folder = self._done_dir(step)
        if not folder.is_dir():
            return set()
        return {int(p.name) for p in folder.iterdir() if p.name.isdigit()}

    def recorded_steps(self) -> list[int]:
        if self.folder is None:
            return sorted(self._done)
        root = self.folder / "done"
        return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []

    def resume_point(self, blocks: Sequence[int], first_step: int = 0) -> tuple[int, set[int]]:
        """``(step, finished blocks of it)`` to continue from: the last recorded step if some of
        ``blocks`` are unfinished there, else the step after it (``first_step`` when nothing is recorded)."""
        steps = [s for s in self.recorded_steps() if s >= first_step]
        if not steps:
            return first_step, set()
        last = steps[-1]
        done = self.done(last) & set(blocks)
        if done >= set(blocks):
            return last + 1, set()
        return last, done

    def drop_step(self, step: int) -> None:
        """Forget the record of ``step`` (once the next step is complete; rank 0 only)."""
        self._done.pop(step, None)
        self._guides.pop(step, None)
        if self.folder is not None:
            shutil.rmtree(self._done_dir(step), ignore_errors=True)
            (self.folder / "guide" / f"{step:05d}.safetensors").unlink(missing_ok=True)

    # -- the sampled guide's latent per step --------------------------------------------------------
    def save_guide(self, step: int, latent: torch.Tensor) -> None:
        """Keep the guide latent at the start of ``step`` (rank 0; written atomically)."""
        latent = latent.detach().cpu().float().contiguous()
        if self.folder is None:
            self._guides[step] = latent
            return
        from safetensors.torch import save_file

        with atomic_path(self.folder / "guide" / f"{step:05d}.safetensors") as tmp:
            save_file({"latent": latent}, str(tmp))

    def load_guide(self, step: int) -> torch.Tensor | None:
        """The guide latent saved for ``step``, or None (then the caller recomputes it)."""
        if self.folder is None:
            return self._guides.get(step)
        path = self.folder / "guide" / f"{step:05d}.safetensors"
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        return load_file(str(path))["latent"]
