"""The zoom explorer's disk cache: block files, the level records (PSNR, seams) and the model's identity.

:class:`BlockCache` is the part of :class:`~zoomldm.viewer.explorer.Explorer` that reads and writes
``<cache>/<fingerprint>/`` (it uses the attributes and methods the explorer sets up: ``cache_dir``,
``levels``, ``geometry``, ``region``, ``blocks_for``, the locks and the in-memory blocks).

**Cache.** ``<cache>/<fingerprint>/``: ``<level>/<bx>_<by>.png`` (each block's whole generation, lossless,
written atomically) and ``<level>.json`` (per-block PSNR of the 2× box-downsampled footprint of the
generation against the parent pixels it came from,
seconds, seed; and the seam statistics). The fingerprint (sha256 of image pixels, model, settings, seed,
levels and geometry) makes a restart reuse the blocks and any change start a new folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..fsutil import atomic_path
from .blocks import _seam_summary, block_seed, downsample2, psnr

FORMAT_VERSION = 2  # 2: the cache holds each block's whole generation (centre + ring); tiles are blended


def model_digest(pipe) -> str:
    """A cheap identity of a pipeline's weights: config, and every tensor's name, shape and first values."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(pipe.config), sort_keys=True, default=str).encode())
    for name in ("unet", "vae", "summarizer"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        for key, tensor in module.state_dict().items():
            h.update(f"{name}.{key}{tuple(tensor.shape)}".encode())
            h.update(tensor.detach().reshape(-1)[:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class BlockCache:
    """Cached blocks of an :class:`~zoomldm.viewer.explorer.Explorer`: paths, reads (with a small in-memory
    cache), writes and the consistency record of each generated level."""

    def block_path(self, step: int, bx: int, by: int) -> Path:
        return self.cache_dir / self.levels[step].key / f"{bx}_{by}.png"

    def level_record_path(self, step: int) -> Path:
        return self.cache_dir / f"{self.levels[step].key}.json"

    def has_block(self, step: int, bx: int, by: int) -> bool:
        return (step, bx, by) in self._memory or self.block_path(step, bx, by).is_file()

    def _read_block(self, key: tuple[int, int, int]) -> np.ndarray | None:
        from PIL import Image

        with self._lock:
            found = self._memory.get(key)
            if found is not None:
                self._memory.move_to_end(key)
                return found
        path = self.block_path(*key)
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
        except FileNotFoundError:
            return None
        self._remember(key, array)
        return array

    def _remember(self, key: tuple[int, int, int], array: np.ndarray) -> None:
        with self._lock:
            self._memory[key] = array
            self._memory.move_to_end(key)
            while len(self._memory) > self._memory_blocks:
                self._memory.popitem(last=False)

    # -- the consistency record ------------------------------------------------------------------------
    def _visible_size(self, step: int, bx: int, by: int) -> tuple[int, int]:
        """``(w, h)`` of the part of block ``(bx, by)``'s footprint inside the canvas (edge blocks reach past)."""
        g = self.geometry
        return min(g.block, (g.width << step) - bx * g.block), min(g.block, (g.height << step) - by * g.block)

    def _write_block(
        self, key: tuple[int, int, int], generation: np.ndarray, parent: np.ndarray, seconds: float
    ) -> None:
        """Cache a block's generation, then update the level record: the block's PSNR, and the seam
        statistics of the blocks whose served pixels became final with it (see :meth:`_settle`)."""
        from PIL import Image

        step, bx, by = key
        g = self.geometry
        w, h = self._visible_size(step, bx, by)
        w2, h2 = (w + 1) // 2 * 2, (h + 1) // 2 * 2
        centre = generation[g.margin : g.margin + h2, g.margin : g.margin + w2]
        score = psnr(downsample2(centre), parent[: h2 // 2, : w2 // 2])
        path = self.block_path(*key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=".png") as tmp:
            Image.fromarray(generation).save(tmp, format="PNG", compress_level=1)
        self._remember(key, generation)
        with self._json_lock:
            record = self.level_record(step)
            record["blocks"][f"{bx}_{by}"] = {
                "psnr_db": round(score, 3),
                "seconds": round(seconds, 3),
                "seed": block_seed(self.seed, step, bx, by),
            }
            self._settle(record, step, bx, by)
            record["seam"] = _seam_summary(record)
            values = [b["psnr_db"] for b in record["blocks"].values()]
            record["psnr_db_mean"] = round(float(np.mean(values)), 3)
            record["psnr_db_min"] = round(float(np.min(values)), 3)
            with atomic_path(self.level_record_path(step), suffix=".json") as tmp:
                tmp.write_text(json.dumps(record, indent=1))

    def _settle(self, record: dict[str, Any], step: int, bx: int, by: int) -> None:
        """Seam statistics over *served* pixels, added once they are final: a block's served pixels are final
        when every block whose generation enters them is generated. For each block that became final with
        ``(bx, by)``: ``interior`` = ``[Σ|Δ|, count]`` of adjacent columns and rows inside its footprint; for
        each pair of 4-adjacent final blocks: ``pairs`` = ``[Σ|Δ|, count]`` of the two columns (rows) that meet
        at their border. Each is a fixed function of the generations, so the order of generation does not
        change the totals."""
        g = self.geometry
        b = g.block
        cols, rows = g.step_blocks(step)
        blocks, pairs = record["blocks"], record.setdefault("pairs", {})
        served: dict[tuple[int, int], np.ndarray] = {}
        for ny in range(max(0, by - 1), min(rows, by + 2)):
            for nx in range(max(0, bx - 1), min(cols, bx + 2)):
                entry = blocks.get(f"{nx}_{ny}")
                if entry is None or "interior" in entry:
                    continue
                w, h = self._visible_size(step, nx, ny)
                needed = self.blocks_for(step, nx * b, ny * b, nx * b + w, ny * b + h)
                if any(f"{k[1]}_{k[2]}" not in blocks for k in needed):
                    continue
                pixels = self.region(step, nx * b, ny * b, w, h, inline=True).astype(np.float64)
                served[(nx, ny)] = pixels
                dx, dy = np.abs(np.diff(pixels, axis=1)), np.abs(np.diff(pixels, axis=0))
                entry["interior"] = [float(dx.sum() + dy.sum()), int(dx.size + dy.size)]
                for mx, my in ((nx - 1, ny), (nx + 1, ny), (nx, ny - 1), (nx, ny + 1)):
                    if "interior" not in blocks.get(f"{mx}_{my}", {}):
                        continue
                    other = served.get((mx, my))
                    if other is None:
                        ow, oh = self._visible_size(step, mx, my)
                        other = self.region(step, mx * b, my * b, ow, oh, inline=True).astype(np.float64)
                    (a, ax, ay), (c, cx, cy) = sorted(
                        [(pixels, nx, ny), (other, mx, my)], key=lambda v: (v[2], v[1])
                    )
                    d = np.abs(a[:, -1] - c[:, 0]) if ay == cy else np.abs(a[-1] - c[0])
                    pairs[f"{ax}_{ay}|{cx}_{cy}"] = [float(d.sum()), int(d.size)]

    def level_record(self, step: int) -> dict[str, Any]:
        """The JSON record of generated ``step`` (PSNR per block, seams), or a fresh one."""
        path = self.level_record_path(step)
        if path.is_file():
            return json.loads(path.read_text())
        return {
            "level": self.levels[step].name,
            "parent": self.levels[step - 1].name,
            "block": self.geometry.block,
            "ring": self.geometry.ring,
            "blend": self.geometry.blend,
            "psnr": "2x box-downsampled block vs the parent pixels it was generated under (dB)",
            "blocks": {},
            "pairs": {},
        }
