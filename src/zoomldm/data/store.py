"""The multi-scale training store (zarr v3), its per-slide parts and the ordered, crash-safe commit.

Layout (``<key>`` is the authors' magnification key: ``20x``, ``10x``, ``2_5x``, … or ``1x`` … ``4x``)::

    STORE/                       root attrs: format, version, domain, levels, encoder, vae, tile size,
                                 resampling filter, settings, ``committed`` (see below)
      <key>/                     one group per magnification (attrs: index, name, grid_size, downsample)
        latents   [N, 3, 64, 64] float16  unquantised VQ-f4 latent of the 256² sample (SPEC §10.3)
        ssl       [N, C, g, g]   float16  UNPOOLED SSL grid, g = 2^index (one embedding per base tile)
        slide     [N]            int32    row of the sample's slide in ``slides/``
        coords    [N, 2]         int64    (x, y) of the region's top-left corner in base px
        mpp       [N]            float32  physical pixel size of the 256² sample (µm or m)
        jpeg, jpeg_start, jpeg_size       optional: JPEG bytes of each 256² sample (ragged, flat uint8)
      slides/                    the slide table: id, path, mpp (level 0), size (level 0 w, h), counts [S, L]
      _parts/<slide>/            work in progress (see below); absent from a finished store

Latents and grids are chunked one sample per chunk inside shards of a few hundred samples, so a random
read touches one small byte range of one file (local disk or object storage through fsspec).

**Crash safety.** Every slide is first written to its own part group ``_parts/<slide>`` whose
``status`` attribute becomes ``complete`` last (``failed`` with the error when the slide is
unreadable). :class:`StoreWriter` then *commits* complete parts in the fixed slide order: it appends
the samples to the level arrays, appends the slide row, and only then rewrites the small
``committed`` attribute (slide and sample counts per level) in one write. Arrays longer than
``committed`` after a crash are cut back when the store is opened again, so a sample is never
duplicated or half-written, and the order of samples does not depend on crashes, worker count or ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import ZoomLDMError
from ..scales import Magnification

STORE_FORMAT = "zoomldm-multiscale"
STORE_VERSION = 1
PARTS = "_parts"
LATENT_SHAPE = (3, 64, 64)
#: target size of one shard file (bytes); shards hold whole samples
SHARD_BYTES = 64 * 2**20
_SAMPLE_ARRAYS = ("latents", "ssl", "slide", "coords", "mpp")
_JPEG_ARRAYS = ("jpeg_start", "jpeg_size")


def normalize_url(store: str | Path) -> str:
    """A local path (``file://`` stripped) or an fsspec URL such as ``s3://bucket/data.zarr``."""
    text = str(store)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return text


def is_local(store: str | Path) -> bool:
    return "://" not in normalize_url(store)


def open_store(
    store: str | Path, mode: str = "r", storage_options: Mapping[str, Any] | None = None
) -> zarr.Group:
    """Open the root group of a store on local disk or any fsspec URL (``s3://``, ``gs://``, ``memory://``)."""
    url = normalize_url(store)
    if is_local(url):
        if mode == "r" and not Path(url).exists():
            raise ZoomLDMError(f"dataset store not found: {url}")
        zstore: Any = zarr.storage.LocalStore(url, read_only=mode == "r")
    else:
        zstore = zarr.storage.FsspecStore.from_url(
            url, storage_options=dict(storage_options or {}), read_only=mode == "r"
        )
    try:
        return zarr.open_group(zstore, mode=mode)
    except FileNotFoundError:
        raise ZoomLDMError(f"dataset store not found: {url}") from None


def _shard_samples(sample_bytes: int) -> int:
    return max(1, min(512, SHARD_BYTES // max(1, sample_bytes)))


def create_store(
    root: zarr.Group, levels: tuple[Magnification, ...], ssl_dim: int, attrs: dict[str, Any], save_jpeg: bool
) -> None:
    """Create the empty level groups, the slide table and the root attributes (``committed`` = 0)."""
    for mag in levels:
        g = root.create_group(mag.key, attributes=_level_attrs(mag))
        grid = (ssl_dim, mag.grid_size, mag.grid_size)
        n_lat = _shard_samples(2 * math.prod(LATENT_SHAPE))
        n_ssl = _shard_samples(2 * math.prod(grid))
        g.create_array(
            "latents",
            shape=(0, *LATENT_SHAPE),
            dtype="float16",
            chunks=(1, *LATENT_SHAPE),
            shards=(n_lat, *LATENT_SHAPE),
        )
        g.create_array("ssl", shape=(0, *grid), dtype="float16", chunks=(1, *grid), shards=(n_ssl, *grid))
        g.create_array("slide", shape=(0,), dtype="int32", chunks=(4096,))
        g.create_array("coords", shape=(0, 2), dtype="int64", chunks=(4096, 2))
        g.create_array("mpp", shape=(0,), dtype="float32", chunks=(4096,))
        if save_jpeg:
            g.create_array(
                "jpeg", shape=(0,), dtype="uint8", chunks=(2**18,), shards=(2**24,), compressors=None
            )
            g.create_array("jpeg_start", shape=(0,), dtype="int64", chunks=(4096,))
            g.create_array("jpeg_size", shape=(0,), dtype="int32", chunks=(4096,))
    slides = root.create_group("slides")
    slides.create_array("id", shape=(0,), dtype=str, chunks=(4096,))
    slides.create_array("path", shape=(0,), dtype=str, chunks=(4096,))
    slides.create_array("mpp", shape=(0,), dtype="float64", chunks=(4096,))
    slides.create_array("size", shape=(0, 2), dtype="int64", chunks=(4096, 2))
    slides.create_array("counts", shape=(0, len(levels)), dtype="int64", chunks=(4096, len(levels)))
    root.create_group(PARTS)
    committed = {"slides": 0, "samples": {m.key: 0 for m in levels}, "jpeg_bytes": {m.key: 0 for m in levels}}
    root.attrs.update({**attrs, "committed": committed, "run": 0})


def _level_attrs(mag: Magnification) -> dict[str, Any]:
    return {
        "index": mag.index,
        "name": mag.name,
        "key": mag.key,
        "grid_size": mag.grid_size,
        "downsample": mag.downsample,
    }


class StoreWriter:
    """Commits finished slide parts to the level arrays, in order, with crash repair (module docstring)."""

    def __init__(self, root: zarr.Group, levels: tuple[Magnification, ...]) -> None:
        self.root = root
        self.levels = levels
        self.committed: dict[str, Any] = dict(root.attrs["committed"])
        self.save_jpeg = "jpeg" in root[levels[0].key]
        self._ids = set(self.committed_ids())

    def committed_ids(self) -> list[str]:
        n = self.committed["slides"]
        return [str(s) for s in self.root["slides/id"][:n]] if n else []

    def committed_counts(self) -> dict[str, dict[str, int]]:
        """Samples per level name of every committed slide."""
        n = self.committed["slides"]
        if not n:
            return {}
        counts = self.root["slides/counts"][:n]
        return {
            sid: {m.name: int(c) for m, c in zip(self.levels, row, strict=True)}
            for sid, row in zip(self.committed_ids(), counts, strict=True)
        }

    def is_committed(self, slide_id: str) -> bool:
        return slide_id in self._ids

    def repair(self) -> int:
        """Cut every array back to the committed length (after a crash mid-commit); returns rows removed."""
        removed = 0
        n_slides = self.committed["slides"]
        for name in ("id", "path", "mpp", "size", "counts"):
            removed += _truncate(self.root[f"slides/{name}"], n_slides)
        for mag in self.levels:
            g = self.root[mag.key]
            n = self.committed["samples"][mag.key]
            for name in _SAMPLE_ARRAYS + (_JPEG_ARRAYS if self.save_jpeg else ()):
                removed += _truncate(g[name], n)
            if self.save_jpeg:
                removed += _truncate(g["jpeg"], self.committed["jpeg_bytes"][mag.key])
        return removed

    def commit(self, part: zarr.Group) -> dict[str, int]:
        """Append one complete part (samples, grids built from its tile embeddings, slide row); returns counts."""
        meta = part.attrs["slide"]
        slide_index = self.committed["slides"]
        embeddings = part["tiles/embeddings"][...]
        counts: dict[str, int] = {}
        samples = dict(self.committed["samples"])
        jpeg_bytes = dict(self.committed["jpeg_bytes"])
        for mag in self.levels:
            src = part[mag.key]
            n = src["latents"].shape[0]
            counts[mag.name] = n
            if n == 0:
                continue
            dst = self.root[mag.key]
            start = samples[mag.key]
            coords = src["coords"][...]
            _append(dst["coords"], start, coords)
            _append(dst["slide"], start, np.full(n, slide_index, dtype=np.int32))
            _append(dst["mpp"], start, np.full(n, meta["base_mpp"] * mag.downsample, dtype=np.float32))
            block = max(1, (2**27) // (2 * embeddings.shape[-1] * mag.grid_size**2))
            for b in range(0, n, block):
                c = coords[b : b + block] // meta["tile"]
                g = mag.grid_size
                grids = np.stack([embeddings[y : y + g, x : x + g].transpose(2, 0, 1) for x, y in c])
                _append(dst["ssl"], start + b, grids)
                _append(dst["latents"], start + b, src["latents"][b : b + block])
            if self.save_jpeg:
                sizes = src["jpeg_size"][...]
                offset = jpeg_bytes[mag.key]
                starts = offset + np.concatenate([[0], np.cumsum(sizes[:-1], dtype=np.int64)])
                _append(dst["jpeg"], offset, src["jpeg"][...])
                _append(dst["jpeg_start"], start, starts.astype(np.int64))
                _append(dst["jpeg_size"], start, sizes)
                jpeg_bytes[mag.key] = offset + int(sizes.sum())
            samples[mag.key] = start + n
        slides = self.root["slides"]
        _append(slides["id"], slide_index, np.array([meta["id"]], dtype=object))
        _append(slides["path"], slide_index, np.array([meta["path"]], dtype=object))
        _append(slides["mpp"], slide_index, np.array([meta["mpp"]], dtype=np.float64))
        _append(slides["size"], slide_index, np.array([meta["size"]], dtype=np.int64))
        _append(
            slides["counts"], slide_index, np.array([[counts[m.name] for m in self.levels]], dtype=np.int64)
        )
        if meta.get("georeference"):  # before the commit point: a stale entry of an uncommitted id is inert
            geo = dict(slides.attrs.get("georeference", {}))
            geo[meta["id"]] = dict(meta["georeference"], scale=meta["scale"], tile=meta["tile"])
            slides.attrs["georeference"] = geo
        # the commit point: one small metadata write
        self.committed = {"slides": slide_index + 1, "samples": samples, "jpeg_bytes": jpeg_bytes}
        self.root.attrs["committed"] = self.committed
        self._ids.add(meta["id"])
        return counts


def region_bounds(root: zarr.Group, level_key: str, index: int) -> tuple[float, float, float, float] | None:
    """``(left, bottom, right, top)`` of sample ``index`` of level ``level_key`` (e.g. ``"1x"``) in its
    scene's CRS, from the georeference ``prepare`` recorded for the slide (a GeoTIFF read with rasterio) and
    the region's coordinates; None for a slide without georeference."""
    from ..scales import DOMAINS

    group = root[level_key]
    slide = int(group["slide"][index])
    slide_id = str(root["slides/id"][slide])
    geo = dict(root["slides"].attrs.get("georeference", {})).get(slide_id)
    if geo is None:
        return None
    mag = DOMAINS[root.attrs["domain"]].parse(level_key)
    x, y = (int(v) for v in group["coords"][index])
    side = geo["tile"] * mag.grid_size
    scale = float(geo["scale"])
    a, b, c, d, e, f = geo["transform"]
    corners = [
        (a * u + b * v + c, d * u + e * v + f)
        for u, v in ((x * scale, y * scale), ((x + side) * scale, (y + side) * scale))
    ]
    (x0, y0), (x1, y1) = corners
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _append(array: zarr.Array, start: int, values: np.ndarray) -> None:
    stop = start + len(values)
    if array.shape[0] < stop:
        array.resize((stop, *array.shape[1:]))
    if len(values):
        array[start:stop] = values


def _truncate(array: zarr.Array, n: int) -> int:
    extra = array.shape[0] - n
    if extra > 0:
        array.resize((n, *array.shape[1:]))
    return max(0, extra)


# -- per-slide parts ----------------------------------------------------------------------------------
def part_status(root: zarr.Group, slide_id: str) -> tuple[str, dict[str, Any]]:
    """``("missing" | "writing" | "complete" | "failed", attrs)`` of a slide's part."""
    parts = root[PARTS]
    if slide_id not in parts:
        return "missing", {}
    attrs = parts[slide_id].attrs.asdict()
    return str(attrs.get("status", "writing")), attrs


def delete_part(root: zarr.Group, slide_id: str) -> None:
    parts = root[PARTS]
    if slide_id in parts:
        del parts[slide_id]


def create_part(
    root: zarr.Group,
    slide_id: str,
    grid_shape: tuple[int, int],
    ssl_dim: int,
    counts: Mapping[Magnification, int],
    save_jpeg: bool,
) -> zarr.Group:
    """A fresh part group (any previous one is deleted) with arrays sized for the slide's plan."""
    delete_part(root, slide_id)
    part = root[PARTS].create_group(slide_id, attributes={"status": "writing"})
    rows, cols = grid_shape
    part.create_group("tiles").create_array(
        "embeddings",
        shape=(rows, cols, ssl_dim),
        dtype="float16",
        chunks=(max(1, min(rows, 64)), max(1, min(cols, 64)), ssl_dim),
    )
    for mag, n in counts.items():
        g = part.create_group(mag.key)
        g.create_array("latents", shape=(n, *LATENT_SHAPE), dtype="float16", chunks=(64, *LATENT_SHAPE))
        g.create_array("coords", shape=(n, 2), dtype="int64", chunks=(max(1, n), 2))
        if save_jpeg:
            g.create_array("jpeg_size", shape=(n,), dtype="int32", chunks=(max(1, n),))
    return part


def finish_part(part: zarr.Group, slide_meta: dict[str, Any], counts: dict[str, int]) -> None:
    """Mark a part complete (the last write of a slide)."""
    part.attrs.update({"slide": slide_meta, "counts": counts, "status": "complete"})


def fail_part(root: zarr.Group, slide_id: str, message: str, run: int) -> None:
    """Record that a slide could not be processed (in run ``run``); a later run retries it."""
    delete_part(root, slide_id)
    root[PARTS].create_group(slide_id, attributes={"status": "failed", "error": message, "run": run})
