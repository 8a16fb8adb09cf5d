"""The multi-scale UNet features of one slide (the five steps in :mod:`.extract`): the tissue tiles of the
finest magnification, the aligned regions containing them at every magnification
(:func:`containing_block`), the SSL embeddings of the base tiles they cover, the UNet features of every
region, and each tile's features fused over the magnifications (:func:`fuse_features`) with the
TRIDENT/CLAM attributes of its bag file."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ZoomLDMError
from ..scales import PATHOLOGY_BASE_MPP
from .feature_settings import _UNIT, FUSIONS, FeatureSettings, check_settings, resolve_magnifications

#: ``progress(slide_id, done, total)`` after each batch of one slide
ProgressFn = Callable[[str, int, int], None]


def containing_block(rows_cols: np.ndarray, span: int) -> np.ndarray:
    """Top-left base tile ``(row, col)`` of the aligned ``span × span`` block containing each tile."""
    return (np.asarray(rows_cols, dtype=np.int64) // span) * span


@dataclass
class SlideFeatures:
    """The fused features of one slide with their level-0 coordinates and attributes."""

    features: np.ndarray
    coords: np.ndarray
    attrs: dict[str, Any]
    #: ``(row, col)`` base tile of each feature row (for tests and debugging; not written)
    tiles: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 2), np.int64))


def extract_slide(
    path: str | Path,
    slide_id: str,
    pipe: Any,
    encoder: Any,
    settings: FeatureSettings,
    mpp: float | None = None,
    progress: ProgressFn | None = None,
) -> SlideFeatures:
    """Features of every tissue tile of one slide (see :mod:`.extract` for the steps)."""
    from ..data.extract import prefetch
    from ..data.extract import read_tile as read_checked  # shared with prepare: overlapped reads, read errors
    from ..data.readers import level0_resolution, open_image
    from ..data.tiling import TILE, base_grid, plan_slide
    from .unet_features import UNetFeatureExtractor

    check_settings(settings, pipe, encoder)
    domain = pipe.config.domain
    mags = resolve_magnifications(pipe.scales, settings.magnifications)
    extractor = UNetFeatureExtractor(pipe, settings.blocks, settings.timestep, settings.seed)
    finest = mags[0]

    with open_image(path, mpp=mpp) as reader:
        # 1. tiles: the finest magnification's tissue regions, as prepare tiles them
        mpp0 = level0_resolution(reader, _UNIT[domain])
        grid = base_grid(reader, mpp0, settings.base(domain))
        plan = plan_slide(reader, grid, [finest], settings.threshold(domain))
        tiles = plan.regions[finest.index]
        if len(tiles) == 0:
            raise ZoomLDMError(
                f"{Path(path).name}: no tile reaches the tissue threshold {settings.threshold(domain)}"
            )
        # 2. the region of each magnification containing each tile, and the base tiles they cover
        blocks = {m.index: np.unique(containing_block(tiles, m.grid_size), axis=0) for m in mags}
        needed = _covered_tiles(blocks, {m.index: m.grid_size for m in mags})
        base_tiles = [tuple(rc) for rc in np.argwhere(needed)]
        total = len(base_tiles) + sum(len(b) for b in blocks.values())
        done = 0

        def report(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(slide_id, done, total)

        # 3. SSL embeddings of every base tile the regions cover (white outside the slide)
        w0, h0 = reader.dimensions
        side0 = TILE * grid.scale
        # float16, as prepare stores them (the grids the model was trained on)
        embeddings = np.zeros((*needed.shape, encoder.dim), dtype=np.float16)
        white = np.full((1, TILE, TILE, 3), 255, dtype=np.uint8)

        def read_tile(rc: tuple[int, int]) -> np.ndarray:
            r, c = rc
            if c * side0 >= w0 or r * side0 >= h0:
                return white[0]
            return read_checked(reader, grid, r, c, 1, TILE, settings.resampling)

        def read_block(rc: tuple[int, int], span: int) -> np.ndarray:
            if span == 1:
                return read_tile(rc)
            # the top-left tile is inside the slide (the region contains a tile); the reader pads the rest white
            return read_checked(reader, grid, *rc, span, TILE, settings.resampling)

        def batches(items: list, read: Callable) -> Iterator[tuple[list, np.ndarray]]:
            for start in range(0, len(items), settings.batch_size):
                chunk = items[start : start + settings.batch_size]
                yield chunk, np.stack([read(item) for item in chunk])

        for chunk, images in prefetch(batches(base_tiles, read_tile)):
            feats = encoder.embed(images, batch_size=len(images)).numpy().astype(np.float16)
            for (r, c), f in zip(chunk, feats, strict=True):
                embeddings[r, c] = f
            report(len(chunk))

        # 4. UNet features of every region, conditioned on its own SSL grid
        per_mag: dict[int, np.ndarray] = {}
        for m in mags:
            span = m.grid_size
            regions = [tuple(rc) for rc in blocks[m.index]]
            out = []
            for chunk, images in prefetch(batches(regions, lambda rc, s=span: read_block(rc, s))):
                grids = [_grid(embeddings, r, c, span) for r, c in chunk]
                out.append(extractor(images, grids, m))
                report(len(chunk))
            per_mag[m.index] = np.concatenate(out)

    # 5. fuse each tile with the regions containing it
    fused = fuse_features(tiles, per_mag, blocks, {m.index: m.grid_size for m in mags}, settings.fusion)
    coords = np.round(tiles[:, ::-1] * side0).astype(np.int64)  # (row, col) → level-0 (x, y)
    attrs = _attributes(
        slide_id, path, reader, grid, mpp0, domain, mags, fused.shape[1], settings, extractor, encoder, pipe
    )
    return SlideFeatures(fused.astype(np.float32), coords, attrs, tiles)


def _covered_tiles(blocks: dict[int, np.ndarray], spans: dict[int, int]) -> np.ndarray:
    """``[rows, cols]`` bool: the base tiles covered by any region (may reach past the slide's edge)."""
    rows = max(int(b[:, 0].max()) + spans[i] for i, b in blocks.items())
    cols = max(int(b[:, 1].max()) + spans[i] for i, b in blocks.items())
    needed = np.zeros((rows, cols), dtype=bool)
    for index, regions in blocks.items():
        for r, c in regions:
            needed[r : r + spans[index], c : c + spans[index]] = True
    return needed


def fuse_features(
    tiles: np.ndarray,
    per_mag: dict[int, np.ndarray],
    blocks: dict[int, np.ndarray],
    spans: dict[int, int],
    fusion: str = "concat",
) -> np.ndarray:
    """Each tile's features at every magnification, fused: ``[N, sum of dims]`` (concat) or ``[N, dim]`` (mean).

    Args:
        tiles: ``[N, 2]`` (row, col) base tile of each instance.
        per_mag: per magnification index, ``[M, d]`` features of its regions ``blocks[index]`` (``[M, 2]``).
        spans: per magnification index, the region side in base tiles (its region containing tile (r, c)
            starts at ``(r // span·span, c // span·span)``).
    """
    parts = []
    for index, features in per_mag.items():
        row_of = {tuple(rc): i for i, rc in enumerate(blocks[index].tolist())}
        parts.append(features[[row_of[tuple(rc)] for rc in containing_block(tiles, spans[index]).tolist()]])
    if fusion == "concat":
        return np.concatenate(parts, axis=1)
    if fusion == "mean":
        if len({p.shape[1] for p in parts}) != 1:
            raise ZoomLDMError("mean fusion needs the same feature size at every magnification")
        return np.mean(parts, axis=0)
    raise ZoomLDMError(f"unknown fusion {fusion!r}; expected one of {', '.join(FUSIONS)}")


def _grid(embeddings: np.ndarray, row: int, col: int, span: int) -> Any:
    import torch

    block = embeddings[row : row + span, col : col + span]  # [span, span, C] row-major
    return torch.from_numpy(np.ascontiguousarray(block.transpose(2, 0, 1))).float()


def _attributes(
    slide_id, path, reader, grid, mpp0, domain, mags, dim, settings, extractor, encoder, pipe
) -> dict:
    finest = mags[0]
    w0, h0 = reader.dimensions
    attrs: dict[str, Any] = {
        # TRIDENT / CLAM names (CONVENTIONS.md)
        "name": slide_id,
        "patch_size": 256,
        "patch_size_level0": int(round(256 * finest.grid_size * grid.scale)),
        "overlap": 0,
        "level0_width": int(w0),
        "level0_height": int(h0),
        "encoder": "zoomldm",
        "mpp": float(mpp0),
        # ours
        "slide_path": str(path),
        "domain": domain,
        "base_mpp": float(grid.base_mpp),
        "magnifications": ",".join(m.name for m in mags),
        "fusion": settings.fusion,
        "feature_dim": int(dim),
        "tissue_threshold": settings.threshold(domain),
        "resampling": settings.resampling,
        "ssl_encoder": json.dumps(encoder.describe()),
        "model": json.dumps(pipe.provenance, default=str),
        "zoomldm_version": _version(),
        **extractor.describe(),
    }
    if domain == "pathology":  # 20x ≙ 0.5 µm/px
        attrs["target_magnification"] = 20.0 * PATHOLOGY_BASE_MPP / (grid.base_mpp * finest.downsample)
        attrs["level0_magnification"] = 20.0 * PATHOLOGY_BASE_MPP / mpp0
    else:
        attrs["target_magnification"] = finest.name
    return attrs


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zoomldm")
    except PackageNotFoundError:
        return "unknown"
