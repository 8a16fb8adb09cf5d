"""Pyramidal TIFF output written band by band: generic tiled TIFF (OpenSlide/TRIDENT/CLAM) or OME-TIFF.

Both layouts open as a multi-level pyramid with the physical pixel size in OpenSlide, tiffslide, tifffile
(``series[0].levels``, ``imread(level=k)``, zarr), Pillow (first page) and QuPath/Bio-Formats. The rules
followed, reader by reader (docs/output.md has the table):

* **OpenSlide** ("generic-tiff", https://openslide.org/formats/generic-tiff/): the first image is tiled
  and is the full resolution; further *tiled images in the main IFD chain* with the reduced-resolution
  bit (NewSubfileType = 1) are its levels; ``openslide.mpp-x/y`` come from X/YResolution with
  ResolutionUnit = centimetre. OpenSlide does not follow SubIFDs.
* **OME-TIFF / Bio-Formats, QuPath** (OME-TIFF specification, "Sub-resolutions",
  https://docs.openmicroscopy.org/ome-model/6.0.0/ome-tiff/specification.html#sub-resolutions): the
  reduced levels of a plane are stored in the SubIFDs (tag 330) of its full-resolution IFD, largest
  first, with NewSubfileType = 1; the UTF-8 OME-XML (ImageDescription of the first IFD) maps planes to
  main-chain IFDs with TiffData. Bio-Formats' MinimalTiffReader (which OMETiffReader reads planes with)
  sets main-chain IFDs with NewSubfileType = 1 apart from the planes, so extra reduced IFDs in the main
  chain never become planes or series.
* **QuPath, plain TIFF**: its OpenSlide image server reports the pyramid; the rule followed is the one for
  plain pyramidal TIFF (tiled; reduced-resolution levels as subsequent IFDs with NewSubfileType = 1;
  resolution tags in the first IFD), which also keeps Bio-Formats from taking the levels for planes.
* **tifffile**: a JSON ImageDescription containing ``"shape":`` is read as tifffile's own "shaped" series
  metadata (``TiffPage.shaped_description``), and the series then fails (``KeyError: 'shape'``) or takes
  a wrong shape; OME-XML makes an OME series whose levels are the SubIFDs; anything else gives a generic
  series whose levels are the NewSubfileType = 1 pages. So no JSON goes into ImageDescription.

Layouts:

* **generic tiled TIFF** (default): 256×256 tiles, JPEG or lossless (zlib/deflate) compression, the full
  resolution first, each 2× reduced level as a further main-chain page with ``subfiletype=1``,
  resolution tags in pixels per centimetre (``xres = 1 / (mpp·1e-4)``) on every level; the
  ImageDescription is one line of plain text.
* **OME-TIFF** (``ome=True``): the reduced levels are SubIFDs of the full-resolution page (OME rule) and
  OME-XML carries ``PhysicalSizeX/Y`` in µm. For OpenSlide, each SubIFD also has a *twin* IFD in the main
  chain (NewSubfileType = 1) whose tile offsets point at the same tile data: the pixels are stored once,
  and each reader finds the levels where its rule says (tifffile and Bio-Formats: SubIFDs; OpenSlide:
  the main chain). No TIFF library writes an IFD that shares another IFD's tiles, so the twins are written
  by tifffile with empty tiles and their TileOffsets/TileByteCounts are then set to the SubIFD's with
  tifffile's ``TiffTag.overwrite``.

Provenance (settings, seed, version, mpp) is stored as JSON in an XMP packet in both layouts, and for
OME-TIFF also as an OME ``MapAnnotation``; :func:`read_provenance` reads it back (:mod:`.tiff_provenance`
says where and why).

Memory: :class:`PyramidalTiffWriter` accepts rows in order (``write_rows``, e.g. from
:func:`zoomldm.sampling.decode.decode_large_to`). Full-resolution tiles go to tifffile as soon as a band of
one tile height is complete (tifffile pulls them from a generator running in a writer thread), so the
full-resolution image is never held. Because every page must be written after the previous one, the
reduced levels (1/3 of the full-resolution pixels in all) are built band by band as rows arrive and are
spooled to temporary raw files beside the output (plain writes, not memory maps, so that they never count in
the resident memory), then read back a band at a time and written tile by tile at ``close()``. Resident
memory is therefore O(width): a few rows of tiles (``tests/io/test_tiff_streaming.py`` measures it). Files
that could pass 4 GiB are written as BigTIFF (:func:`needs_bigtiff`).
The TIFF is written to a temporary name and renamed into place when complete.

Here: the writer (rows in, the writer thread, the temporary files, the rename) and :func:`write_tiff`. The
tags of each page are :mod:`.tiff_pages`, the reduced levels :mod:`.tiff_levels`, the level and file sizes
:mod:`.tiff_sizes`, the provenance :mod:`.tiff_provenance`.
"""

from __future__ import annotations

import math
import os
import queue
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ZoomLDMError
from .images import as_uint8_hwc, provenance
from .tiff_levels import _band_tiles, _Reducer, _Spool
from .tiff_pages import TiffPageLayout
from .tiff_provenance import (
    PROVENANCE_NAMESPACE,
    XMP_TAG,
    _ome_record,  # noqa: F401 (its home was this module)
    read_provenance,
)
from .tiff_sizes import (
    CLASSIC_TIFF_LIMIT,
    COMPRESSIONS,
    TIFF_BYTES_PER_PIXEL,
    TIFF_TILE,
    estimated_tiff_bytes,
    level_shapes,
    needs_bigtiff,
    tiff_size_bound,
)

__all__ = [
    "CLASSIC_TIFF_LIMIT",
    "COMPRESSIONS",
    "OME_XSD",
    "PROVENANCE_NAMESPACE",
    "TIFF_BYTES_PER_PIXEL",
    "TIFF_TILE",
    "XMP_TAG",
    "PyramidalTiffWriter",
    "estimated_tiff_bytes",
    "level_shapes",
    "needs_bigtiff",
    "read_provenance",
    "tiff_size_bound",
    "write_tiff",
]

#: the OME-XML 2016-06 schema (bundled, CC BY 3.0; see io/ome/README.md) to validate OME-TIFF output
OME_XSD = Path(__file__).with_name("ome") / "ome-2016-06.xsd"

_END = object()
_ABORT = object()


class PyramidalTiffWriter(TiffPageLayout):
    """Write a pyramidal tiled TIFF from rows that arrive in order, with memory bounded by one tile band.

    Use as a context manager (an exception inside the block removes the partial output)::

        with PyramidalTiffWriter("out.tif", height, width, mpp=0.5, metadata={"seed": 0}) as tif:
            decode_large_to(vae, latent, tif)

    Args:
        path: output file (``.tif``/``.tiff``; ``.ome.tif`` for OME-TIFF is conventional).
        height, width: full-resolution size in pixels.
        mpp: micrometres per pixel at full resolution (written as resolution tags in px/cm and, for
            OME-TIFF, as ``PhysicalSizeX/Y``); ``None`` writes no physical size.
        compression: ``"jpeg"`` (default), ``"zlib"`` / ``"deflate"`` (lossless), or ``"none"``.
        quality: JPEG quality 1-100.
        tile_size: tile edge in pixels (a multiple of 16; 256 is what slide readers expect).
        ome: write OME-TIFF (reduced levels as subIFDs) instead of the generic tiled TIFF.
        metadata: provenance record (settings, seed, …) stored as JSON with the package version.
        levels: number of pyramid levels (default: halve until the image fits in one tile).
        bigtiff: force BigTIFF on/off (default: :func:`needs_bigtiff`, when the file could pass 4 GiB).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        height: int,
        width: int,
        *,
        mpp: float | None = None,
        compression: str = "jpeg",
        quality: int = 90,
        tile_size: int = 256,
        ome: bool = False,
        metadata: Mapping[str, Any] | None = None,
        levels: int | None = None,
        bigtiff: bool | None = None,
    ) -> None:
        import tifffile

        if height < 1 or width < 1:
            raise ZoomLDMError(f"TIFF size must be positive, got {height}x{width}")
        if compression not in COMPRESSIONS:
            raise ZoomLDMError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        if not 1 <= quality <= 100:
            raise ZoomLDMError(f"JPEG quality must be 1-100, got {quality}")
        if tile_size < 16 or tile_size % 16:
            raise ZoomLDMError(f"tile size must be a positive multiple of 16, got {tile_size}")
        if mpp is not None and not mpp > 0:
            raise ZoomLDMError(f"mpp (µm per pixel) must be > 0, got {mpp}")
        if levels is not None and levels < 1:
            raise ZoomLDMError(f"levels must be >= 1, got {levels}")

        self.path = Path(path)
        self.height, self.width, self.tile_size, self.mpp, self.ome = height, width, tile_size, mpp, ome
        self.compression, self.quality = COMPRESSIONS[compression], quality
        self.shapes = level_shapes(height, width, tile_size, levels)
        self.record = provenance(metadata)
        self.record.setdefault("mpp", mpp)

        # 1. temporary output and spool for the reduced levels, in the output's folder (same file system)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp"
        self._spool = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.levels-", dir=self.path.parent))
        self._stores = [
            _Spool(self._spool / f"level{k}.raw", h, w) for k, (h, w) in enumerate(self.shapes[1:], start=1)
        ]
        self._reducers = [_Reducer(store) for store in self._stores]

        # 2. the full-resolution page is written by tifffile in a thread, pulling bands from a short queue
        if bigtiff is None:
            bigtiff = needs_bigtiff(height, width, tile_size)
        self.bigtiff = bool(bigtiff)
        # ome=False: the OME-XML is made here with tifffile.OmeXml and written as the ImageDescription, since
        # in OME mode tifffile would add every further main-chain page (the OpenSlide twins) as an OME Image
        self._tif = tifffile.TiffWriter(self._tmp, bigtiff=bigtiff, ome=False)
        self._band = np.empty((tile_size, width, 3), np.uint8)
        self._band_rows = 0
        self._next_row = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._write_level0, name="zoomldm-tiff-writer", daemon=True)
        self._thread.start()

    # -- public API ---------------------------------------------------------------------------------------

    @property
    def rows_written(self) -> int:
        """Full-resolution rows received so far."""
        return self._next_row

    def write_rows(self, y: int, rows: np.ndarray) -> None:
        """Append full-resolution rows ``[n, width, 3]`` (uint8) starting at row ``y`` (rows come in order)."""
        rows = as_uint8_hwc(rows, "rows")
        if self._closed:
            raise ZoomLDMError(f"{self.path.name}: the writer is closed")
        if rows.ndim != 3 or rows.shape[1:] != (self.width, 3):
            raise ZoomLDMError(f"rows must be [n, {self.width}, 3] uint8 RGB, got shape {rows.shape}")
        if y != self._next_row:
            raise ZoomLDMError(f"rows must arrive in order: expected row {self._next_row}, got {y}")
        if y + rows.shape[0] > self.height:
            raise ZoomLDMError(f"rows {y}..{y + rows.shape[0]} exceed the image height {self.height}")
        self._next_row += rows.shape[0]
        start = 0
        while start < rows.shape[0]:
            take = min(self.tile_size - self._band_rows, rows.shape[0] - start)
            self._band[self._band_rows : self._band_rows + take] = rows[start : start + take]
            self._band_rows += take
            start += take
            if self._band_rows == self.tile_size or (
                self._next_row == self.height and start == rows.shape[0]
            ):
                self._put(self._band[: self._band_rows].copy())
                self._band_rows = 0
        reduced = rows
        for reducer in self._reducers:
            reduced = reducer.push(reduced)

    def close(self) -> Path:
        """Finish the file: complete the full-resolution page, write the reduced levels, rename into place."""
        if self._closed:
            return self.path
        try:
            if self._next_row != self.height:
                raise ZoomLDMError(
                    f"{self.path.name}: received {self._next_row} of {self.height} rows; the image is incomplete"
                )
            self._put(_END)
            self._thread.join()
            if self._error is not None:
                raise self._error
            carry = np.zeros((0, self.width, 3), np.uint8)
            for reducer in self._reducers:  # odd heights leave one row per level to pair with itself
                carry = np.concatenate([reducer.push(carry), reducer.finish()])
            for level, store in enumerate(self._stores, start=1):
                self._write_page(level, self._store_tiles(store))
            if self.ome:  # OME: main-chain twins of the SubIFDs for OpenSlide (module docstring)
                for level in range(1, len(self.shapes)):
                    self._write_page(level, iter([b""] * self._tile_count(level)))
            self._tif.close()
            if self.ome and len(self.shapes) > 1:
                self._point_twins_at_subifds()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._cleanup()
        return self.path

    def abort(self) -> None:
        """Stop writing and remove the partial output (called automatically on errors)."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            try:
                self._queue.put(_ABORT, timeout=5)
            except queue.Full:
                pass
            self._thread.join(timeout=30)
        try:
            self._tif.close()
        except Exception:  # the file is discarded anyway; a failed flush of a partial page does not matter
            pass
        self._tmp.unlink(missing_ok=True)
        self._cleanup()

    def __enter__(self) -> PyramidalTiffWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- internals ----------------------------------------------------------------------------------------

    def _put(self, item: Any) -> None:
        while True:  # back-pressure: wait for tifffile, but never forever on a dead writer thread
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    raise self._error or ZoomLDMError("the TIFF writer thread stopped") from None

    def _queued_tiles(self) -> Iterator[np.ndarray]:
        for _ in range(math.ceil(self.height / self.tile_size)):
            band = self._queue.get()
            if band is _ABORT or band is _END:
                raise ZoomLDMError("TIFF writing was stopped before the image was complete")
            yield from _band_tiles(band, self.tile_size)

    def _store_tiles(self, store: _Spool) -> Iterator[np.ndarray]:
        for y in range(0, store.shape[0], self.tile_size):
            yield from _band_tiles(store.read(y, self.tile_size), self.tile_size)

    def _write_level0(self) -> None:
        try:
            self._write_page(0, self._queued_tiles())
            if self._queue.get() is not _END:  # wait for close() (or abort) before the main thread goes on
                raise ZoomLDMError("TIFF writing was stopped")
        except BaseException as err:  # handed to the main thread by _put/close
            self._error = err

    def _cleanup(self) -> None:
        for store in self._stores:
            store.close()
        self._stores.clear()
        self._reducers.clear()
        shutil.rmtree(self._spool, ignore_errors=True)


def write_tiff(
    path: str | os.PathLike[str],
    image: np.ndarray,
    *,
    mpp: float | None = None,
    band_rows: int = 1024,
    **options: Any,
) -> Path:
    """Write an in-memory ``uint8`` HWC image (or a memory-mapped array) as a pyramidal TIFF.

    ``options`` are those of :class:`PyramidalTiffWriter` (compression, quality, tile_size, ome, metadata,
    levels, bigtiff). The image is fed to the writer in bands of ``band_rows`` rows.
    """
    array = as_uint8_hwc(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] != 3:
        if array.shape[2] == 1:
            array = np.repeat(array, 3, axis=2)
        else:
            array = array[:, :, :3]  # RGBA → RGB (slide readers expect RGB)
    with PyramidalTiffWriter(path, array.shape[0], array.shape[1], mpp=mpp, **options) as writer:
        for y in range(0, array.shape[0], band_rows):
            writer.write_rows(y, np.ascontiguousarray(array[y : y + band_rows]))
    return Path(path)
