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

Provenance (settings, seed, version, mpp) is stored as JSON inside an XMP packet (TIFF tag 700, the
standard place for application metadata; the JSON is the text of ``zoomldm:provenance``) in both layouts,
and for OME-TIFF also as an OME ``MapAnnotation`` (namespace :data:`PROVENANCE_NAMESPACE`, one entry per
key) that OME tools show. No reader takes either for its own metadata. (A private tag was rejected:
unregistered numbers collide with vendor tags, e.g. 65420 marks a Hamamatsu NDPI file for OpenSlide and
tifffile.) :func:`read_provenance` reads it back, also from files of the previous layout (JSON in the
ImageDescription, or in the OME Image ``Description``).

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
"""

from __future__ import annotations

import json
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

from ..errors import InputError, ZoomLDMError
from .images import as_uint8_hwc, provenance

COMPRESSIONS = {"jpeg": "jpeg", "zlib": "zlib", "deflate": "zlib", "none": None}
#: tile edge of the written TIFFs (what slide readers expect)
TIFF_TILE = 256
#: a classic TIFF addresses its data with 32-bit offsets: files must stay below 4 GiB
CLASSIC_TIFF_LIMIT = 2**32
#: typical stored bytes per pixel, for disk planning (:func:`estimated_tiff_bytes`): JPEG quality 90 measured
#: 0.36 B/px on the 256² tiles of the H&E image brca_001.jpeg, taken as 0.5 for margin; zlib measured
#: 2.75 B/px on the same image (no predictor), taken as 3 (raw): lossless compression of generated tissue
#: is not counted on
TIFF_BYTES_PER_PIXEL = {"jpeg": 0.5, "zlib": 3.0, "deflate": 3.0, "none": 3.0}
#: XML namespace of the provenance in the XMP packet, and Namespace of the OME MapAnnotation
PROVENANCE_NAMESPACE = "urn:zoomldm:provenance:1"
#: the OME-XML 2016-06 schema (bundled, CC BY 3.0; see io/ome/README.md) to validate OME-TIFF output
OME_XSD = Path(__file__).with_name("ome") / "ome-2016-06.xsd"
XMP_TAG = 700  # XMLPacket (Adobe XMP specification part 3: TIFF tag 700, type BYTE)
_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_END = object()
_ABORT = object()


def _xmp_packet(record: Mapping[str, Any]) -> bytes:
    """An XMP packet whose ``zoomldm:provenance`` property holds ``record`` as JSON (XML-escaped)."""
    from xml.etree import ElementTree as ET

    ET.register_namespace("x", "adobe:ns:meta/")
    ET.register_namespace("rdf", _RDF)
    ET.register_namespace("zoomldm", PROVENANCE_NAMESPACE)
    meta = ET.Element("{adobe:ns:meta/}xmpmeta")
    rdf = ET.SubElement(meta, f"{{{_RDF}}}RDF")
    description = ET.SubElement(rdf, f"{{{_RDF}}}Description", {f"{{{_RDF}}}about": ""})
    prop = ET.SubElement(description, f"{{{PROVENANCE_NAMESPACE}}}provenance")
    prop.text = json.dumps(record, sort_keys=True, default=str)
    body = ET.tostring(meta, encoding="unicode")
    return f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>{body}<?xpacket end="r"?>'.encode()


def _xmp_record(packet: bytes | str) -> dict[str, Any] | None:
    """The provenance record in an XMP packet written by :func:`_xmp_packet`, or None if there is none."""
    from xml.etree import ElementTree as ET

    text = packet.decode("utf-8", "replace") if isinstance(packet, bytes) else packet
    try:
        node = ET.fromstring(text.strip("\x00 \n\r\t\ufeff")).find(f".//{{{PROVENANCE_NAMESPACE}}}provenance")
        record = json.loads(node.text) if node is not None and node.text else None
    except (ET.ParseError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The provenance record of a TIFF written by :class:`PyramidalTiffWriter`, or None if it has none.

    Reads the XMP packet of the first IFD; then, for OME-TIFF, the ``MapAnnotation`` of namespace
    :data:`PROVENANCE_NAMESPACE`; then the previous layout (JSON in the first ImageDescription, or in the
    OME Image ``Description``). A missing file or one that is not a TIFF is an :class:`InputError`.
    """
    import tifffile

    from ..tensorfiles import check_input_file

    path = check_input_file(path, "TIFF", InputError)
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            xmp = page.tags.valueof(XMP_TAG)
            description = page.description
            ome = tif.ome_metadata if tif.is_ome else None
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as err:
        reason = "it holds no image" if isinstance(err, IndexError) else str(err).splitlines()[0]
        raise InputError(f"{path}: not a readable TIFF ({reason}); pass a .tif written by zoomldm") from err
    if xmp:
        record = _xmp_record(xmp)
        if record is not None:
            return record
    if ome:
        return _ome_record(ome)
    try:  # previous layout of the generic TIFF: the record as JSON in ImageDescription
        record = json.loads(description) if description.lstrip().startswith("{") else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _ome_record(omexml: str) -> dict[str, Any] | None:
    """Provenance from OME-XML: our MapAnnotation, else (previous layout) JSON in the Image Description."""
    from xml.etree import ElementTree as ET

    try:
        root = ET.fromstring(omexml)
    except ET.ParseError:
        return None
    for annotation in root.iter():
        if annotation.tag.endswith("}MapAnnotation") and annotation.get("Namespace") == PROVENANCE_NAMESPACE:
            record: dict[str, Any] = {}
            for entry in annotation.iter():
                if entry.tag.endswith("}M") and entry.get("K") is not None:
                    text = entry.text or ""
                    try:  # every value is written as JSON; text from other tools is kept as a string
                        record[entry.get("K", "")] = json.loads(text)
                    except ValueError:
                        record[entry.get("K", "")] = text
            return record
    for node in root.iter():
        if node.tag.endswith("}Description") and node.text and node.text.lstrip().startswith("{"):
            try:
                record = json.loads(node.text)
            except ValueError:
                continue
            return record if isinstance(record, dict) else None
    return None


def level_shapes(
    height: int, width: int, tile_size: int = 256, levels: int | None = None
) -> list[tuple[int, int]]:
    """Sizes of the pyramid levels: each level halves the previous one (rounding up, so no edge pixel is
    lost); by default levels are added until the image fits in one tile."""
    shapes = [(height, width)]
    while (levels is None and max(shapes[-1]) > tile_size) or (levels is not None and len(shapes) < levels):
        h, w = shapes[-1]
        if h == 1 and w == 1:
            break
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def _padded_pixels(height: int, width: int, tile_size: int) -> int:
    """Pixels stored for a pyramid: every level's tiles, edge tiles padded to whole tiles."""
    return sum(
        math.ceil(h / tile_size) * math.ceil(w / tile_size) * tile_size**2
        for h, w in level_shapes(height, width, tile_size)
    )


def tiff_size_bound(height: int, width: int, tile_size: int = TIFF_TILE) -> int:
    """An upper bound of the pyramidal TIFF's size in any compression: every level's padded tiles
    uncompressed (3 B/px; JPEG and zlib tiles are not larger in practice) plus 1 % for tags and offsets."""
    return int(_padded_pixels(height, width, tile_size) * 3 * 1.01) + 2**16


def estimated_tiff_bytes(
    height: int, width: int, compression: str = "jpeg", tile_size: int = TIFF_TILE
) -> int:
    """Typical size of the pyramidal TIFF (for disk planning): :data:`TIFF_BYTES_PER_PIXEL` × the padded
    pixels of all levels (≈ 4/3 of the full resolution) + 1 % for tags and offsets."""
    if compression not in COMPRESSIONS:
        raise ZoomLDMError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    per_pixel = TIFF_BYTES_PER_PIXEL[compression]
    return int(_padded_pixels(height, width, tile_size) * per_pixel * 1.01) + 2**16


def needs_bigtiff(height: int, width: int, tile_size: int = TIFF_TILE) -> bool:
    """Whether the pyramid must be a BigTIFF: when it *could* pass the classic TIFF's 4 GiB
    (:func:`tiff_size_bound`). The bound, not a typical size, decides, because a classic file that grows past
    4 GiB cannot be finished (tifffile stops at the first offset that does not fit) and that would lose a long
    run at its last step; BigTIFF opens in OpenSlide, tifffile, Bio-Formats and QuPath alike."""
    return tiff_size_bound(height, width, tile_size) >= CLASSIC_TIFF_LIMIT


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


class PyramidalTiffWriter:
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

    def _tile_count(self, level: int) -> int:
        height, width = self.shapes[level]
        return math.ceil(height / self.tile_size) * math.ceil(width / self.tile_size)

    def _ome_xml(self) -> bytes:
        """OME-XML (2016-06 schema) for the single RGB image, with the provenance as a MapAnnotation."""
        import tifffile

        version = self.record["zoomldm_version"]
        omexml = tifffile.OmeXml(Creator=f"zoomldm {version}")
        image: dict[str, Any] = {
            "Name": self.path.name.split(".")[0],
            "Description": f"Generated by zoomldm {version}; provenance in the MapAnnotation {PROVENANCE_NAMESPACE}",
            # values as JSON so that they read back exactly (a string "5" stays a string)
            "MapAnnotation": {
                "Namespace": PROVENANCE_NAMESPACE,
                "Value": {key: json.dumps(value, default=str) for key, value in sorted(self.record.items())},
            },
        }
        if self.mpp is not None:
            image.update(PhysicalSizeX=self.mpp, PhysicalSizeXUnit="µm")
            image.update(PhysicalSizeY=self.mpp, PhysicalSizeYUnit="µm")
        height, width = self.shapes[0]
        omexml.addimage(np.uint8, (height, width, 3), (1, 1, 1, height, width, 3), axes="YXS", **image)
        return omexml.tostring(declaration=True).encode()  # OME-XML is UTF-8 ("µm")

    def _write_page(self, level: int, tiles: Iterator[np.ndarray] | Iterator[bytes]) -> None:
        height, width = self.shapes[level]
        version = self.record["zoomldm_version"]
        kwargs: dict[str, Any] = {
            "shape": (height, width, 3),
            "dtype": np.uint8,
            "photometric": "rgb",
            "tile": (self.tile_size, self.tile_size),
            "compression": self.compression,
            "software": f"zoomldm {version}",
            "metadata": None,  # never tifffile's JSON "shaped" description (module docstring)
            # tifffile's parallel encoder gathers `buffersize` bytes of tiles before encoding them (256 MiB
            # by default); one band of tiles keeps memory bounded by the band
            "buffersize": self.tile_size**2 * 3 * math.ceil(width / self.tile_size),
        }
        if self.compression == "jpeg":
            kwargs["compressionargs"] = {"level": self.quality}
        elif self.compression == "zlib":
            kwargs["predictor"] = True
        if self.mpp is not None:
            # pixels per centimetre at this level (each level's pixels cover a larger physical size)
            scale_y, scale_x = self.height / height, self.width / width
            kwargs["resolution"] = (1e4 / (self.mpp * scale_x), 1e4 / (self.mpp * scale_y))
            kwargs["resolutionunit"] = "CENTIMETER"
        if level == 0:
            xmp = _xmp_packet(self.record)
            kwargs["extratags"] = [(XMP_TAG, 1, len(xmp), xmp, True)]
            if self.ome:
                kwargs["description"] = self._ome_xml()
                if len(self.shapes) > 1:
                    kwargs["subifds"] = len(self.shapes) - 1
            else:
                kwargs["description"] = f"zoomldm {version} pyramidal image; provenance: XMP (TIFF tag 700)"
        else:
            kwargs["subfiletype"] = 1  # reduced-resolution image
        self._tif.write(tiles, **kwargs)

    def _point_twins_at_subifds(self) -> None:
        """Give each main-chain twin page the tile offsets and byte counts of its SubIFD (same tiles)."""
        import tifffile

        with tifffile.TiffFile(self._tmp, mode="r+b") as tif:
            tif.pages.useframes = False
            subifds = tifffile.TiffPages(tif.pages.first)
            for level in range(1, len(self.shapes)):
                twin, source = tif.pages[level], subifds[level - 1]
                assert isinstance(twin, tifffile.TiffPage) and isinstance(source, tifffile.TiffPage)
                for name in ("TileOffsets", "TileByteCounts"):
                    tag = source.tags[name]
                    twin.tags[name].overwrite(tag.value, dtype=tag.dtype)

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
