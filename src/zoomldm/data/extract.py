"""Turn one slide into one complete part: read → embed base tiles → VQ-encode every level's 256² image.

:func:`process_slide` is the unit of work that ``zoomldm prepare`` spreads over worker processes and
ranks. It writes only to the slide's own part group (``_parts/<slide>``, see :mod:`.store`) and marks
it complete last, so an interrupted slide is simply redone.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import zarr
from PIL import Image

from ..errors import InputError, ZoomLDMError
from ..models.encoders import SSLEncoder
from ..scales import Magnification
from .readers import level0_resolution, open_image
from .store import LATENT_SHAPE, create_part, finish_part
from .tiling import TILE, base_grid, plan_slide, read_region

T = TypeVar("T")
#: ``progress(slide_id, done, total)``: called after every batch
ProgressFn = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SlideSource:
    """One input image: its id in the store, its path, and an optional resolution override."""

    id: str
    path: str
    mpp: float | None = None


@dataclass
class ExtractionSettings:
    """What :func:`process_slide` needs besides the models (a picklable subset of the prepare settings)."""

    levels: tuple[Magnification, ...]
    unit: str  # "um" (pathology) or "m" (satellite)
    base_mpp: float | None
    threshold: float | tuple[float, ...]
    resampling: str = "lanczos"
    batch_size: int = 32
    save_jpeg: bool = False
    jpeg_quality: int = 90
    vae_dtype: torch.dtype | None = None


@torch.inference_mode()
def vq_encode(vae: torch.nn.Module, images: np.ndarray, dtype: torch.dtype | None = None) -> np.ndarray:
    """uint8 ``[N, 256, 256, 3]`` → unquantised, unscaled latents ``[N, 3, 64, 64]`` float16 (SPEC §10.3)."""
    device = next(vae.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        latents = vae.encode(x).latents
    return latents.float().cpu().numpy().astype(np.float16)


def process_slide(
    source: SlideSource,
    root: zarr.Group,
    settings: ExtractionSettings,
    encoder: SSLEncoder,
    vae: torch.nn.Module,
    progress: ProgressFn | None = None,
) -> dict[str, int]:
    """Write the complete part of one slide; returns the number of samples per level name.

    Raises whatever reading the slide raises (:class:`~zoomldm.errors.ZoomLDMError` for a missing
    resolution or an unreadable file); the caller records it as a failed slide.
    """
    with open_image(source.path, mpp=source.mpp) as reader:
        mpp0 = level0_resolution(reader, settings.unit)
        grid = base_grid(reader, mpp0, settings.base_mpp)
        plan = plan_slide(reader, grid, settings.levels, settings.threshold)
        counts = {mag: len(plan.regions[mag.index]) for mag in settings.levels}
        part = create_part(root, source.id, (grid.rows, grid.cols), encoder.dim, counts, settings.save_jpeg)
        needed = plan.tiles_needed()
        total = int(needed.sum()) + sum(n for m, n in counts.items() if m.index > 0)
        done = 0

        def report(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(source.id, done, total)

        report(0)
        base_mag = next((m for m in settings.levels if m.index == 0), None)
        jpegs: dict[Magnification, list[bytes]] = {m: [] for m in settings.levels}

        # 1. base tiles, row-major: embed each once; the 20x samples are these very tiles
        embeddings = np.zeros((grid.rows, grid.cols, encoder.dim), dtype=np.float16)
        tiles = [tuple(rc) for rc in np.argwhere(needed)]
        level0 = {tuple(rc): i for i, rc in enumerate(plan.regions[0])} if base_mag is not None else {}
        for batch, images in prefetch(_reads(reader, grid, tiles, 1, settings)):
            feats = encoder.embed(images, batch_size=len(images)).numpy().astype(np.float16)
            for (r, c), f in zip(batch, feats, strict=True):
                embeddings[r, c] = f
            rows = [(j, level0[rc]) for j, rc in enumerate(batch) if rc in level0]
            if rows:
                _write_samples(
                    part, base_mag, [i for _, i in rows], images[[j for j, _ in rows]], vae, settings, jpegs
                )
            report(len(batch))
        part["tiles/embeddings"][...] = embeddings

        # 2. every other level: its 256·2^k base-px region read from the best pyramid level, resized
        for mag in settings.levels:
            regions = [tuple(rc) for rc in plan.regions[mag.index]]
            if mag.index > 0:
                for b, (_batch, images) in enumerate(
                    prefetch(_reads(reader, grid, regions, mag.grid_size, settings))
                ):
                    start = b * settings.batch_size
                    _write_samples(
                        part, mag, list(range(start, start + len(images))), images, vae, settings, jpegs
                    )
                    report(len(images))
            if regions:
                part[mag.key]["coords"][...] = np.array(
                    [(c * TILE, r * TILE) for r, c in regions], dtype=np.int64
                )
            if settings.save_jpeg:
                data = np.frombuffer(b"".join(jpegs[mag]), dtype=np.uint8)
                part[mag.key].create_array("jpeg", data=data, chunks=(max(1, len(data)),))
                part[mag.key]["jpeg_size"][...] = np.array([len(j) for j in jpegs[mag]], dtype=np.int32)

        w0, h0 = reader.dimensions
        meta: dict[str, Any] = {
            "id": source.id,
            "path": str(source.path),
            "mpp": mpp0,
            "base_mpp": grid.base_mpp,
            "scale": grid.scale,
            "size": [int(w0), int(h0)],
            "base_size": [grid.width, grid.height],
            "tile": TILE,
            "backend": reader.backend,
            "resolution_source": reader.resolution.source if reader.resolution else "",
        }
        geo = getattr(reader, "geo", None)
        if geo is not None:  # the scene's CRS and level-0 geotransform: each region's bounds follow
            meta["georeference"] = geo.to_dict()
        result = {mag.name: n for mag, n in counts.items()}
        finish_part(part, meta, result)
        return result


def _reads(
    reader: Any, grid: Any, blocks: list[tuple[int, int]], span: int, settings: ExtractionSettings
) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
    """Batches of (block coordinates, uint8 images [B, 256, 256, 3])."""
    for start in range(0, len(blocks), settings.batch_size):
        batch = blocks[start : start + settings.batch_size]
        images = np.stack([read_tile(reader, grid, r, c, span, TILE, settings.resampling) for r, c in batch])
        yield batch, images


def read_tile(
    reader: Any, grid: Any, row: int, col: int, span: int, out: int = TILE, resampling: str = "lanczos"
) -> np.ndarray:
    """:func:`~.tiling.read_region`, with a failure of the image library (a truncated file's missing
    tile, damaged compressed data) raised as :class:`InputError` naming the pyramid level and position."""
    try:
        return read_region(reader, grid, row, col, span, out, resampling)
    except ZoomLDMError:
        raise
    except Exception as err:  # each image library raises its own types for damaged data
        x, y, size = grid.level0_box(row, col, span)
        try:
            level = reader.best_level(size / out)
        except Exception:  # the reader itself is broken: report the position only
            level = "?"
        raise InputError(
            f"{reader.name}: unreadable tile at pyramid level {level} (level-0 x {int(x)}, y {int(y)}): "
            f"{_reason(err)}; the file is truncated or damaged (copy or export it again)"
        ) from err


#: substrings of image-library messages → what they mean for the user
_REASONS = (
    (("empty input file", "premature end", "truncat", "unexpected end", "eof"), "the data ends early"),
    (("invalid page offset", "invalid offset", "out of range"), "an offset points past the end of the file"),
    (
        ("corrupt", "damaged", "bad huffman", "invalid jpeg", "not a jpeg", "decode"),
        "damaged compressed data",
    ),
)


def _reason(err: BaseException) -> str:
    text = str(err).strip().lower()
    for needles, reason in _REASONS:
        if any(n in text for n in needles):
            return reason
    if isinstance(err, MemoryError):
        return "out of memory"
    return f"the image library could not decode it ({str(err).strip() or 'no details'})"


def describe_failure(err: BaseException) -> str:
    """One line saying why a slide failed, for the console and the JSON report: a
    :class:`~zoomldm.errors.ZoomLDMError`'s own message; for anything else a human reason (a truncated
    file, damaged data, out of memory) rather than an exception class name."""
    if isinstance(err, ZoomLDMError):
        return str(err)
    if isinstance(err, MemoryError):
        return "out of memory while processing the slide (use a smaller --batch-size or fewer --workers)"
    if isinstance(err, FileNotFoundError):
        return f"file not found: {err.filename or err}"
    library = type(err).__module__.split(".")[0]
    if library in _IMAGE_LIBRARIES or isinstance(err, (EOFError, OSError)):
        return f"cannot read the image data: {_reason(err)}; the file is truncated or damaged (copy or export it again)"
    return f"unexpected error ({type(err).__name__}: {err}); this is likely a bug, please report it"


#: the modules whose exceptions mean "this file's data cannot be decoded"
_IMAGE_LIBRARIES = {"imagecodecs", "tifffile", "tiffslide", "openslide", "PIL", "zlib", "struct"}


def _write_samples(
    part: zarr.Group,
    mag: Magnification,
    indices: list[int],
    images: np.ndarray,
    vae: torch.nn.Module,
    settings: ExtractionSettings,
    jpegs: dict[Magnification, list[bytes]],
) -> None:
    latents = vq_encode(vae, images, settings.vae_dtype)
    if latents.shape[1:] != LATENT_SHAPE:
        raise ValueError(
            f"the VQ autoencoder gives latents {latents.shape[1:]}, expected {LATENT_SHAPE} (a VQ-f4)"
        )
    target = part[mag.key]["latents"]
    start = 0
    for end in range(1, len(indices) + 1):  # one write per run of consecutive indices (they ascend)
        if end == len(indices) or indices[end] != indices[end - 1] + 1:
            target[indices[start] : indices[end - 1] + 1] = latents[start:end]
            start = end
    if settings.save_jpeg:
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=settings.jpeg_quality)
            jpegs[mag].append(buffer.getvalue())


def prefetch(items: Iterable[T]) -> Iterator[T]:
    """Yield from ``items`` while the next item is produced in a background thread.

    Reading and resizing (OpenSlide, libjpeg, PIL) release the GIL, so reading batch i+1 overlaps with
    embedding / encoding batch i.
    """
    iterator = iter(items)
    sentinel = object()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(next, iterator, sentinel)
        while True:
            item = future.result()
            if item is sentinel:
                return
            future = pool.submit(next, iterator, sentinel)
            yield item  # type: ignore[misc]
