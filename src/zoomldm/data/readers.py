"""Readers for whole-slide images and large satellite / ordinary images.

One small backend class per library, all behind :class:`SlideReader`:

- :class:`OpenSlideReader` — vendor WSI formats and generic tiled TIFF (openslide-python + openslide-bin),
- :class:`TiffSlideReader` — the pure-python fallback for SVS / NDPI / generic TIFF (tiffslide),
- :class:`TifffileReader` — any pyramidal or flat TIFF and GeoTIFF (tifffile + zarr),
- :class:`PillowReader` — ordinary PNG / JPEG files, with an in-memory 2× pyramid,
- :class:`RasterioReader` — georeferenced rasters (GeoTIFF / COG: CRS, nodata, band order; rasterio).

:func:`open_image` picks the backend from the file's extension and tries the next one when a backend
cannot read the file. Every reader returns ``uint8`` RGB ``[H, W, 3]`` arrays.

Physical resolution (CONVENTIONS "Slides"): the µm/px (pathology) or m/px (satellite) of level 0 comes
from the metadata — ``openslide.mpp-x``, ``openslide.mirax.MPP``, ``aperio.MPP``,
``hamamatsu.XResolution``, then ``tiff.XResolution`` with its unit, and for GeoTIFF the
``ModelPixelScaleTag`` — or from an override (``mpp=`` here, ``--mpp`` / a CSV ``mpp`` column in
``zoomldm prepare``). The objective-power string is never used.

Modules: the base class in :mod:`.reader_base`, the backends in :mod:`.reader_backends`, the metadata
lookups in :mod:`.resolution`; this one chooses the backend of a file (:func:`open_image`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError, ZoomLDMError
from ..io.images import decode_error_reason
from ..tensorfiles import check_input_file, first_line
from .reader_backends import OpenSlideReader, PillowReader, RasterioReader, TifffileReader, TiffSlideReader
from .reader_base import RESAMPLING, SlideReader, _quiet_tifffile
from .resolution import Resolution, _positive, resolution_from_properties

__all__ = [
    "RESAMPLING",
    "SUPPORTED_EXTENSIONS",
    "OpenSlideReader",
    "PillowReader",
    "RasterioReader",
    "Resolution",
    "SlideReader",
    "TiffSlideReader",
    "TifffileReader",
    "level0_resolution",
    "open_image",
    "resolution_from_properties",
]

_WSI_EXTENSIONS = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm", ".qptiff"}
_TIFF_EXTENSIONS = {".tif", ".tiff", ".btf"}
_PILLOW_EXTENSIONS = {".png", ".jpg", ".jpeg"}
#: every file extension ``zoomldm prepare`` looks for in a folder
SUPPORTED_EXTENSIONS = frozenset(_WSI_EXTENSIONS | _TIFF_EXTENSIONS | _PILLOW_EXTENSIONS)


_BACKENDS: dict[str, type[SlideReader]] = {
    cls.backend: cls
    for cls in (OpenSlideReader, TiffSlideReader, TifffileReader, PillowReader, RasterioReader)
}


def _candidates(path: Path) -> list[str]:
    ext = path.suffix.lower()
    if ext in _PILLOW_EXTENSIONS:
        return ["pillow"]
    if ext in _TIFF_EXTENSIONS:
        if _is_geotiff(path):  # OpenSlide would open it as generic TIFF but ignore the georeferencing
            return ["rasterio", "tifffile"]  # rasterio: CRS, nodata, bands (tifffile: without rasterio)
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
