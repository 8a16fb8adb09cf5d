"""Writing a large latent canvas: blended decode streamed to PNG / pyramidal TIFF / memory, with the
constraint metrics measured on the way and a resumable state for the sampling stages.

The decode (:func:`zoomldm.sampling.decode.decode_large_to`) hands finished pixel rows to a tee of sinks:
the TIFF writer (tile by tile, never the full image), an in-memory array (small outputs and PNG), and a
metric sink that collects one tile row at a time, downsamples each tile (area, and the sampler's cubic
``down``) and compares it with the tile's footprint in the guide image (:mod:`.metrics`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ZoomLDMError
from ..fsutil import atomic_path
from .decode import DecodeConfig, decode_large_to
from .metrics import ConstraintAccumulator, to_levels

#: outputs up to this many pixels are also returned as an array (a 8192² RGB image is 192 MiB)
MAX_IN_MEMORY_PIXELS = 8192 * 8192
TIFF_SUFFIXES = (".tif", ".tiff")
OME_TIFF_SUFFIXES = (".ome.tif", ".ome.tiff")
PNG_SUFFIXES = (".png",)


def is_ome_path(path: str | Path) -> bool:
    """Whether an output name asks for OME-TIFF (``.ome.tif`` or ``.ome.tiff``, any case)."""
    return Path(path).name.lower().endswith(OME_TIFF_SUFFIXES)


def to_uint8_image(image: torch.Tensor) -> np.ndarray:
    """``[3,H,W]`` in [-1, 1] → uint8 HWC with the official conversion (truncation), as the decoder."""
    return (((image.float() + 1) / 2).clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def check_output_path(
    out: str | Path | None, height: int, width: int, compression: str = "jpeg"
) -> Path | None:
    """Validate the output path (and TIFF compression) for an image of this size before any model work."""
    from ..io.tiff import COMPRESSIONS

    if compression not in COMPRESSIONS:
        raise ZoomLDMError(f"compression must be one of {', '.join(COMPRESSIONS)}; got {compression!r}")
    if out is None:
        if height * width > MAX_IN_MEMORY_PIXELS:
            raise ZoomLDMError(
                f"a {width}×{height} image is too large to return in memory; pass out='….tif' "
                "(a pyramidal TIFF written tile by tile)"
            )
        return None
    out = Path(out)
    suffix = out.suffix.lower()  # ".tif" for "x.ome.tif" too (OME-TIFF is chosen by the full name)
    if suffix not in TIFF_SUFFIXES + PNG_SUFFIXES:
        raise ZoomLDMError(f"output must end in .tif, .tiff, .ome.tif, .ome.tiff or .png; got {out.name}")
    if suffix in PNG_SUFFIXES and height * width > MAX_IN_MEMORY_PIXELS:
        raise ZoomLDMError(f"a {width}×{height} image is too large for PNG; write a .tif")
    return out


class _MetricSink:
    """Collects tile rows of the decoded output and compares each downsampled tile with the guide
    (uint8 ``[Hg, Wg, 3]``: numpy, or a zarr array read one footprint row at a time)."""

    def __init__(self, tile: int, k: int, guide: Any, origin: tuple[int, int], width: int):
        self.tile, self.footprint = tile, tile // k
        self.guide = guide
        self.row0, self.col0 = origin  # tile row / column of the output's first tile in the guide canvas
        self.band = np.empty((tile, width, 3), np.uint8)
        self.filled = 0
        self.band_index = 0
        self.acc = ConstraintAccumulator(k)

    def write_rows(self, y: int, rows: np.ndarray) -> None:
        start = 0
        while start < rows.shape[0]:
            take = min(self.tile - self.filled, rows.shape[0] - start)
            self.band[self.filled : self.filled + take] = rows[start : start + take]
            self.filled += take
            start += take
            if self.filled == self.tile:
                self._flush()

    def _flush(self) -> None:
        f, t = self.footprint, self.tile
        band = to_levels(self.band)[0]  # [3, tile, W]
        tiles = band.unflatten(2, (-1, t)).permute(2, 0, 1, 3)  # [n, 3, tile, tile]
        r, c0 = self.row0 + self.band_index, self.col0
        guide = to_levels(np.asarray(self.guide[r * f : (r + 1) * f, c0 * f : (c0 + tiles.shape[0]) * f]))[0]
        self.acc.add(tiles, guide.unflatten(2, (-1, f)).permute(2, 0, 1, 3))
        self.filled = 0
        self.band_index += 1


def write_canvas(
    pipe,
    canvas: Any,
    out: Path | None,
    *,
    k: int,
    guide_image: Any,
    origin: tuple[int, int] = (0, 0),
    mpp: float | None = None,
    metadata: dict[str, Any] | None = None,
    decode: DecodeConfig | None = None,
    keep_in_memory: bool | None = None,
    compression: str = "jpeg",
    ome: bool = False,
    pixels: Any = None,
    progress: bool = True,
) -> tuple[np.ndarray | None, dict[str, float]]:
    """Decode ``canvas`` ``[C, H, W]`` and write it to ``out`` (TIFF streamed, or PNG), returning the image
    (when kept in memory) and the output's constraint metrics against ``guide_image`` (uint8 HWC).
    ``compression`` (jpeg, zlib, none) and ``ome`` are the TIFF writer's options. ``origin`` is the (tile
    row, tile column) of the canvas' first tile in the guide's tile grid. ``pixels`` (a uint8 ``[H, W, 3]``
    zarr array) also receives the rows: a cascade stage's output, the next stage's guide.

    ``canvas`` may be a tensor or a lazily read array (:class:`~.canvas.LatentView` of the zarr canvas):
    the decode reads it window by window. Host memory is then O(width) — the decode band (one window
    height of pixel rows), the metric sink's tile row and the TIFF writer's row of tiles, i.e.
    O(√pixels) for a square image — plus the returned image only when it is kept in memory."""
    from ..io.images import save_png
    from ..io.tiff import PyramidalTiffWriter

    f = pipe.config.vae_factor
    height, width = canvas.shape[-2] * f, canvas.shape[-1] * f
    keep = keep_in_memory if keep_in_memory is not None else height * width <= MAX_IN_MEMORY_PIXELS
    is_png = out is not None and out.suffix.lower() in PNG_SUFFIXES
    keep = keep or is_png or out is None
    image = np.empty((height, width, 3), np.uint8) if keep else None
    meter = _MetricSink(pipe.config.image_size, k, guide_image, origin, width)
    sinks: list[Callable[[int, np.ndarray], None]] = [meter.write_rows]
    if image is not None:
        sinks.append(lambda y, rows: image.__setitem__(slice(y, y + rows.shape[0]), rows))
    if pixels is not None:
        sinks.append(lambda y, rows: pixels.__setitem__(slice(y, y + rows.shape[0]), rows))
    meta = dict(metadata or {})
    writer = None
    if out is not None and not is_png:
        writer = PyramidalTiffWriter(
            out,
            height,
            width,
            mpp=mpp,
            metadata=meta,
            compression=compression,
            ome=ome or is_ome_path(out),
        )
        sinks.append(writer.write_rows)

    def tee(y: int, rows: np.ndarray) -> None:
        for sink in sinks:
            sink(y, rows)

    try:
        decode_large_to(pipe.vae, canvas, tee, decode or DecodeConfig(), progress=progress)
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    metrics = meter.acc.result()
    if is_png:
        save_png(out, image, dict(meta, output_psnr=metrics["psnr"], output_mae=metrics["mae"]))
    return image, metrics


# ----------------------------------------------------------------------------------------------
# resumable state of the sampling stages
# ----------------------------------------------------------------------------------------------
class RunState:
    """The state folder of a long run, hidden beside the output (``.<out>.resume/``).

    It holds the joint stage's tile canvas (:meth:`canvas_dir`: a zarr group per stage, resumable by block,
    :mod:`.canvas`) and per-stage checkpoints of the small or not yet out-of-core stages (``inversion``,
    ``post``: tensors with the step count and a fingerprint of all settings, written atomically after every
    step). A rerun with the same settings continues where the last one stopped (the noise is keyed by tile
    and step, so the result is the same as an uninterrupted run). The folder is removed when the output is
    complete. Without an output path nothing is written (the canvas is in memory); with ``enabled=False``
    nothing is resumed, and the canvas folder is still used (the tiles must live somewhere) but started
    afresh.
    """

    def __init__(self, out: Path | None, settings: dict[str, Any], enabled: bool = True) -> None:
        self.dir = out.parent / f".{out.name}.resume" if out is not None else None
        self.resume = enabled
        blob = json.dumps(settings, sort_keys=True, default=str).encode()
        self.fingerprint = hashlib.sha256(blob).hexdigest()

    def canvas_dir(self, stage: str) -> Path | None:
        """The folder of a stage's zarr tile canvas (None: keep it in memory)."""
        return None if self.dir is None else self.dir / f"{stage}.zarr"

    def load(self, stage: str) -> tuple[int, dict[str, torch.Tensor]] | None:
        """``(next step, tensors)`` of a saved stage with the same settings, or None."""
        if self.dir is None or not self.resume or not (self.dir / f"{stage}.safetensors").is_file():
            return None
        from safetensors import safe_open

        path = self.dir / f"{stage}.safetensors"
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != self.fingerprint:
                return None
            return int(meta["next_step"]), {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118

    def save(self, stage: str, next_step: int, tensors: dict[str, torch.Tensor | None]) -> None:
        """Save a stage's tensors after ``next_step − 1`` (atomically; nothing without resume)."""
        if self.dir is None or not self.resume:
            return
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        data = {k: v.contiguous().cpu() for k, v in tensors.items() if v is not None}
        with atomic_path(self.dir / f"{stage}.safetensors") as tmp:
            save_file(data, str(tmp), metadata={"fingerprint": self.fingerprint, "next_step": str(next_step)})

    def clear(self) -> None:
        """Remove the state folder (the output is complete)."""
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
