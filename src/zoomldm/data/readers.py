"""Readers for whole-slide images and large satellite / ordinary images.

One small backend class per library, all behind :class:`SlideReader`:

- :class:`OpenSlideReader` — vendor WSI formats and generic tiled TIFF (openslide-python + openslide-bin),
- :class:`TiffSlideReader` — the pure-python fallback for SVS / NDPI / generic TIFF (tiffslide),
- :class:`TifffileReader` — any pyramidal or flat TIFF and GeoTIFF (tifffile + zarr),
- :class:`PillowReader` — ordinary PNG / JPEG files, with an in-memory 2× pyramid.

:func:`open_image` picks the backend from the file's extension and tries the next one when a backend
cannot read the file. Every reader returns ``uint8`` RGB ``[H, W, 3]`` arrays.

Physical resolution (CONVENTIONS "Slides"): the µm/px (pathology) or m/px (satellite) of level 0 comes
from the metadata — ``openslide.mpp-x``, ``openslide.mirax.MPP``, ``aperio.MPP``,
``hamamatsu.XResolution``, then ``tiff.XResolution`` with its unit, and for GeoTIFF the
``ModelPixelScaleTag`` — or from an override (``mpp=`` here, ``--mpp`` / a CSV ``mpp`` column in
``zoomldm prepare``). The objective-power string is never used.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from ..errors import InputError, ZoomLDMError
from ..io.images import decode_error_reason
from ..tensorfiles import check_input_file, first_line

#: Filters accepted for resizing (all of PIL's resize filters are antialiased when downsampling).
RESAMPLING = {
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "hamming": Image.Resampling.HAMMING,
}

_WSI_EXTENSIONS = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm", ".qptiff"}
_TIFF_EXTENSIONS = {".tif", ".tiff", ".btf"}
_PILLOW_EXTENSIONS = {".png", ".jpg", ".jpeg"}
#: every file extension ``zoomldm prepare`` looks for in a folder
SUPPORTED_EXTENSIONS = frozenset(_WSI_EXTENSIONS | _TIFF_EXTENSIONS | _PILLOW_EXTENSIONS)


@dataclass(frozen=True)
class Resolution:
    """Physical size of one level-0 pixel: ``value`` in ``unit`` ("um" or "m"), and where it came from."""

    value: float
    unit: str
    source: str


class SlideReader:
    """Base class: a multi-resolution image with level-0 coordinates (OpenSlide's conventions).

    Subclasses set ``level_dimensions`` (``(width, height)`` per level, level 0 first),
    ``level_downsamples`` and ``metadata_resolution``, and implement :meth:`_read_level`.
    """

    backend: ClassVar[str] = ""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.level_dimensions: list[tuple[int, int]] = []
        self.level_downsamples: list[float] = []
        self.metadata_resolution: Resolution | None = None
        self.resolution_override: Resolution | None = None

    # -- what a backend implements -------------------------------------------------------------------
    def _read_level(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """``uint8 [height, width, 3]`` of ``level``; (x0, y0) is the top-left corner in level-0 px."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file handle."""

    # -- shared logic ----------------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def resolution(self) -> Resolution | None:
        """The override when one is set, else the metadata's resolution (or ``None``)."""
        return self.resolution_override or self.metadata_resolution

    def best_level(self, downsample: float) -> int:
        """The coarsest level that is still at least as fine as ``downsample`` (nearest finer level)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-6):
                best = i if ds >= self.level_downsamples[best] else best
        return best

    def read(
        self,
        x: float,
        y: float,
        width: float,
        height: float,
        out_size: tuple[int, int],
        resample: str = "lanczos",
    ) -> np.ndarray:
        """Region ``(x, y, width, height)`` in level-0 px, resampled to ``out_size = (w, h)``.

        Reads the nearest finer pyramid level and resizes with an antialiased filter, so the result does
        not depend on which levels a file happens to contain beyond resampling rounding.
        """
        out_w, out_h = out_size
        level = self.best_level(min(width / out_w, height / out_h))
        ds = self.level_downsamples[level]
        lw_max, lh_max = self.level_dimensions[level]
        lx, ly = int(round(x / ds)), int(round(y / ds))
        lw, lh = max(1, int(round(width / ds))), max(1, int(round(height / ds)))
        if lx < 0 or ly < 0 or lx >= lw_max or ly >= lh_max:
            raise ZoomLDMError(f"{self.name}: region ({x}, {y}, {width}, {height}) lies outside the image")
        x0, y0 = int(round(lx * ds)), int(round(ly * ds))
        try:
            with _quiet_tifffile():
                pixels = self._read_level(level, x0, y0, min(lw, lw_max - lx), min(lh, lh_max - ly))
        except ZoomLDMError:
            raise
        except Exception as err:  # OpenSlideError, imagecodecs' Jpeg8Error, ValueError, OSError, ...
            raise InputError(
                f"{self.path}: unreadable tile at level {level} ({x0}, {y0}) (level-0 px): "
                f"{decode_error_reason(err)}; re-export or re-copy the file"
            ) from err
        if pixels.shape[:2] != (lh, lw):  # a rounding pixel past the edge: pad with background (white)
            pixels = np.pad(
                pixels, ((0, lh - pixels.shape[0]), (0, lw - pixels.shape[1]), (0, 0)), constant_values=255
            )
        if (lw, lh) == (out_w, out_h):
            return pixels
        return np.asarray(Image.fromarray(pixels).resize((out_w, out_h), RESAMPLING[resample]))

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """The whole image with its longer side at most ``max_side`` px."""
        w, h = self.dimensions
        f = max(w, h) / max_side
        return self.read(0, 0, w, h, (max(1, round(w / f)), max(1, round(h / f))) if f > 1 else (w, h))

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, levels={self.level_dimensions}, resolution={self.resolution})"


def resolution_from_properties(props: Mapping[str, object]) -> Resolution | None:
    """µm/px from OpenSlide-style properties, in TRIDENT's lookup order (CONVENTIONS "Slides")."""
    for key in ("openslide.mpp-x", "tiffslide.mpp-x", "openslide.mirax.MPP", "aperio.MPP"):
        value = _positive(props.get(key))
        if value is not None:
            return Resolution(value, "um", key)
    value = _positive(props.get("hamamatsu.XResolution"))  # pixels per centimetre
    if value is not None:
        return Resolution(1e4 / value, "um", "hamamatsu.XResolution")
    value = _positive(props.get("tiff.XResolution"))
    unit = str(props.get("tiff.ResolutionUnit", "")).lower()
    if value is not None and unit in _UM_PER_UNIT:
        return Resolution(_UM_PER_UNIT[unit] / value, "um", f"tiff.XResolution ({unit})")
    return None


_UM_PER_UNIT = {"centimeter": 1e4, "inch": 25400.0}


def _positive(value: object) -> float | None:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _rgb(image: Image.Image) -> np.ndarray:
    """PIL image → uint8 RGB; transparent pixels (outside the scanned area) become white."""
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"))


class _OpenSlideAPIReader(SlideReader):
    """A reader over an object with OpenSlide's API (tiffslide implements the same one on purpose)."""

    def _attach(self, slide) -> None:
        self._slide = slide
        self.level_dimensions = [tuple(int(v) for v in d) for d in slide.level_dimensions]
        self.level_downsamples = [float(d) for d in slide.level_downsamples]
        self.metadata_resolution = resolution_from_properties(slide.properties)

    def _read_level(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        return _rgb(self._slide.read_region((x0, y0), level, (width, height)))

    def close(self) -> None:
        self._slide.close()


class OpenSlideReader(_OpenSlideAPIReader):
    """Vendor WSI formats (SVS, NDPI, MRXS, SCN, …) and generic tiled TIFF through OpenSlide."""

    backend = "openslide"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        import openslide

        if openslide.OpenSlide.detect_format(str(path)) is None:
            raise ZoomLDMError("not a format OpenSlide knows")
        self._attach(openslide.OpenSlide(str(path)))


class TiffSlideReader(_OpenSlideAPIReader):
    """SVS / NDPI / SCN / generic TIFF through tiffslide (pure python; OpenSlide's fallback)."""

    backend = "tiffslide"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        import tiffslide

        self._attach(tiffslide.TiffSlide(str(path)))


class TifffileReader(SlideReader):
    """Any TIFF tifffile understands: pyramidal (OME, generic) or flat, tiled or stripped, and GeoTIFF.

    Levels are the series' pyramid levels (``series.levels``), read lazily through tifffile's zarr
    store. GeoTIFF files give m/px from ``ModelPixelScaleTag`` (projected CRS in metres or feet;
    geographic degrees are converted at the image's latitude), other files µm/px from ``XResolution``.
    """

    backend = "tifffile"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        import tifffile
        import zarr

        self._tif = tifffile.TiffFile(str(path))
        series = self._tif.series[0]
        self._axes = series.axes
        if not set(self._axes) >= {"Y", "X"} or len(self._axes.replace("S", "").replace("C", "")) != 2:
            self._tif.close()
            raise ZoomLDMError(f"expected a 2-D RGB or grayscale image; the TIFF has axes {series.axes}")
        if series.dtype != np.uint8:
            self._tif.close()
            raise ZoomLDMError(f"expected 8-bit pixels, found {series.dtype}; convert to 8-bit RGB first")
        self._levels = [zarr.open_array(series.aszarr(level=i), mode="r") for i in range(len(series.levels))]
        yx = [self._axes.index("Y"), self._axes.index("X")]
        self.level_dimensions = [(int(a.shape[yx[1]]), int(a.shape[yx[0]])) for a in self._levels]
        w0 = self.level_dimensions[0][0]
        self.level_downsamples = [w0 / w for w, _ in self.level_dimensions]
        page = series.pages[0] if series.pages[0] is not None else self._tif.pages[0]
        self.metadata_resolution = _geotiff_resolution(page.tags) or _tiff_resolution(page.tags)

    def _read_level(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        x, y = int(round(x0 / ds)), int(round(y0 / ds))
        index = tuple(
            slice(y, y + height) if ax == "Y" else slice(x, x + width) if ax == "X" else slice(None)
            for ax in self._axes
        )
        pixels = np.asarray(self._levels[level][index])
        if self._axes.index("Y") > self._axes.index("X"):
            pixels = pixels.swapaxes(0, 1)
        if pixels.ndim == 3 and self._axes[0] in "SC":  # planar (S, Y, X)
            pixels = np.moveaxis(pixels, 0, -1)
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        if pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, 3, axis=-1)
        return np.ascontiguousarray(pixels[..., :3])

    def close(self) -> None:
        self._tif.close()


_GEO_MODEL_TYPE, _GEO_LINEAR_UNITS, _GEO_ANGULAR_UNITS = 1024, 3076, 2054
_METRES_PER_LINEAR_UNIT = {9001: 1.0, 9002: 0.3048, 9003: 1200 / 3937}
_METRES_PER_DEGREE = 111_320.0  # at the equator; scaled by cos(latitude) for the x direction


def _geotiff_resolution(tags: object) -> Resolution | None:
    """m/px of a GeoTIFF from ``ModelPixelScaleTag`` (33550) and the GeoKey directory (34735)."""
    scale = tags.get(33550)  # type: ignore[attr-defined]
    if scale is None:
        return None
    sx = _positive(scale.value[0])
    if sx is None:
        return None
    keys: dict[int, int] = {}
    directory = tags.get(34735)  # type: ignore[attr-defined]
    if directory is not None:
        values = list(directory.value)
        for i in range(4, 4 + 4 * values[3], 4):
            key, location, _count, value = values[i : i + 4]
            if location == 0:
                keys[key] = value
    if keys.get(_GEO_MODEL_TYPE) == 2:  # geographic: pixel scale in degrees
        tie = tags.get(33922)  # type: ignore[attr-defined]
        latitude = float(tie.value[4]) if tie is not None and len(tie.value) >= 5 else 0.0
        metres = sx * _METRES_PER_DEGREE * math.cos(math.radians(latitude))
        return Resolution(
            metres, "m", "GeoTIFF ModelPixelScaleTag (degrees, converted at the image latitude)"
        )
    factor = _METRES_PER_LINEAR_UNIT.get(keys.get(_GEO_LINEAR_UNITS, 9001))
    if factor is None:
        return None
    return Resolution(sx * factor, "m", "GeoTIFF ModelPixelScaleTag")


def _tiff_resolution(tags: object) -> Resolution | None:
    xres = tags.get("XResolution")  # type: ignore[attr-defined]
    unit = tags.get("ResolutionUnit")  # type: ignore[attr-defined]
    if xres is None or unit is None:
        return None
    num, den = xres.value
    ppu = _positive(num / den if den else None)
    per_unit = {2: 25400.0, 3: 1e4}.get(int(unit.value))
    if ppu is None or per_unit is None:
        return None
    return Resolution(
        per_unit / ppu, "um", f"TIFF XResolution ({'inch' if int(unit.value) == 2 else 'centimeter'})"
    )


class PillowReader(SlideReader):
    """Ordinary PNG / JPEG files. The image is decoded once and a 2× pyramid is built in memory.

    These formats carry no trustworthy physical resolution (a 72-dpi JPEG header is not a microscope
    calibration), so the resolution must come from the override.
    """

    backend = "pillow"
    _MIN_LEVEL_SIDE = 512

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # large images are the point
        try:
            with Image.open(path) as image:
                levels = [image.convert("RGB")]
        finally:
            Image.MAX_IMAGE_PIXELS = previous
        while min(levels[-1].size) >= 2 * self._MIN_LEVEL_SIDE:
            levels.append(levels[-1].reduce(2))  # 2×2 box average
        self._levels = [np.asarray(level) for level in levels]
        self.level_dimensions = [level.size for level in levels]
        w0 = self.level_dimensions[0][0]
        self.level_downsamples = [w0 / w for w, _ in self.level_dimensions]

    def _read_level(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        x, y = int(round(x0 / ds)), int(round(y0 / ds))
        return np.ascontiguousarray(self._levels[level][y : y + height, x : x + width])


_BACKENDS: dict[str, type[SlideReader]] = {
    cls.backend: cls for cls in (OpenSlideReader, TiffSlideReader, TifffileReader, PillowReader)
}


def _candidates(path: Path) -> list[str]:
    ext = path.suffix.lower()
    if ext in _PILLOW_EXTENSIONS:
        return ["pillow"]
    if ext in _TIFF_EXTENSIONS:
        if _is_geotiff(path):  # OpenSlide would open it as generic TIFF but ignore the georeferencing
            return ["tifffile"]
        return ["openslide", "tiffslide", "tifffile"]
    if ext in _WSI_EXTENSIONS:
        return ["openslide", "tiffslide"]
    raise ZoomLDMError(
        f"{path.name}: unsupported file type {ext!r}; expected one of {sorted(SUPPORTED_EXTENSIONS)}"
    )


def _is_geotiff(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            return 33550 in tif.pages[0].tags
    except Exception:  # unreadable here: let the backends report why
        return False


def open_image(path: str | Path, mpp: float | None = None, backend: str | None = None) -> SlideReader:
    """Open a slide or large image with the first backend that can read it.

    Args:
        path: the file.
        mpp: override of the level-0 resolution (µm/px for pathology, m/px for satellite); use it when
            the metadata has none or is wrong.
        backend: force one backend (``openslide``, ``tiffslide``, ``tifffile``, ``pillow``).

    Raises:
        ZoomLDMError: the file is missing, of an unsupported type, or no backend can read it (the
            message names the file and each backend's reason).
    """
    path = check_input_file(path, "image", InputError)  # missing, a directory, empty
    if backend is not None and backend not in _BACKENDS:
        raise ZoomLDMError(f"unknown reader backend {backend!r}; expected one of {sorted(_BACKENDS)}")
    names = [backend] if backend else _candidates(path)
    errors = []
    for name in names:
        try:
            with _quiet_tifffile():
                reader = _BACKENDS[name](path)
        except Exception as err:  # each library raises its own types for unreadable files
            errors.append(f"{name}: {_open_reason(err)}")
            continue
        if mpp is not None:
            if _positive(mpp) is None:
                reader.close()
                raise ZoomLDMError(
                    f"{path.name}: the resolution override must be a positive number, got {mpp}"
                )
            reader.resolution_override = Resolution(float(mpp), "", "override")
        return reader
    raise InputError(f"cannot read {path}: " + "; ".join(errors) + " (damaged? re-export or re-copy it)")


def _open_reason(err: BaseException) -> str:
    """One line for a backend that cannot open a file: the decode reason for image-library errors
    (truncated file, unknown image format), else the library's first line."""
    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError | EOFError) or "truncated" in str(err).lower():
        return decode_error_reason(err)
    return first_line(err)


class _WhileQuiet(logging.Filter):
    """Drops tifffile's records in a thread inside :func:`_quiet_tifffile` (thread-local, so parallel
    readers never change each other's logging)."""

    state = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.state, "quiet", False)


_TIFFFILE_FILTER = _WhileQuiet()


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """tifffile logs damaged-file warnings ("invalid page offset") to stderr; the error we raise says it in
    one line, so they are held back while a backend opens or reads (errors still propagate)."""
    logger = logging.getLogger("tifffile")
    if _TIFFFILE_FILTER not in logger.filters:
        logger.addFilter(_TIFFFILE_FILTER)
    previous = getattr(_WhileQuiet.state, "quiet", False)
    _WhileQuiet.state.quiet = True
    try:
        yield
    finally:
        _WhileQuiet.state.quiet = previous


def level0_resolution(reader: SlideReader, unit: str) -> float:
    """Level-0 pixel size in ``unit`` ("um" for pathology, "m" for satellite), override first.

    Raises:
        ZoomLDMError: naming the slide and the override when neither the override nor metadata in
            that unit is available.
    """
    res = reader.resolution
    if res is not None and (res.source == "override" or res.unit == unit):
        return res.value
    found = f" (found {res.value:g} {res.unit}/px from {res.source})" if res is not None else ""
    label = "µm/px" if unit == "um" else "m/px"
    raise ZoomLDMError(
        f"{reader.name}: no {label} resolution in its metadata{found}; "
        "give it with --mpp or an 'mpp' column in a --slides CSV"
    )
