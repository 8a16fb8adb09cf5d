"""Georeferenced rasters (issue 25): GeoTIFF / Cloud-Optimized GeoTIFF in and out, through rasterio.

Remote-sensing users hold scenes as GeoTIFFs: a coordinate reference system (CRS), a geotransform (pixel →
map coordinates), a nodata value or mask, 1–4+ bands in some order and dtype. ``rasterio`` (GDAL) is the
field's library for all of it (install extra ``geo``); this module is the one place zoomldm touches it:

* :func:`read_geo_info` — CRS, geotransform, bounds, **ground resolution in m/px** (projected CRSs: the
  pixel size in the CRS's linear unit × its metre factor; geographic CRSs: degrees converted at the
  scene's centre latitude, 111 320 m per degree of longitude × cos(lat) and 110 574 m per degree of
  latitude — the WGS84 values at mid-latitudes, within 0.5 % everywhere below 80°; the mean of x and y), and
  nodata;
* :func:`read_rgb` — the scene (or a window) as uint8 RGB with its valid-data mask. **Documented
  conversions** (each announced in one ``note:`` line): 1 band → grey RGB; 4 bands RGB + NIR (NAIP) → the
  first three, or RGBA → RGB with the alpha as mask; bands whose colour interpretation says another order
  (e.g. B, G, R) → reordered to R, G, B; other dtypes (uint16 reflectance, float) → a 2 %–98 % percentile
  stretch of the valid pixels to 0–255. Nodata pixels (the nodata value, the dataset mask, or alpha 0)
  are invalid: ``prepare`` counts them as "no tissue" and skips regions below its valid-data threshold;
* :func:`write_cog` — a Cloud-Optimized GeoTIFF (GDAL's COG driver: 256² tiles, overviews averaged down
  to one tile, IFDs first), georeferenced when a CRS and transform are given (a super-resolution of a
  georeferenced input: the input's CRS and a transform scaled by the factor), else a plain COG of a
  synthetic image; :func:`validate_cog` checks the layout as ``rio cogeo validate`` /
  GDAL's ``validate_cloud_optimized_geotiff.py`` do.

Errors are one line naming the file and what to do (:class:`~zoomldm.errors.InputError`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, ZoomLDMError

__all__ = [
    "GeoInfo",
    "ground_resolution_m",
    "has_georeference",
    "read_geo_info",
    "read_rgb",
    "scaled_transform",
    "validate_cog",
    "write_cog",
]

#: metres per degree at the equator along a parallel (WGS84 semi-major axis × π/180) and along a meridian
#: (the mean meridional degree): a geographic scene's pixel size is converted at its centre latitude
M_PER_DEG_LON = 111_320.0
M_PER_DEG_LAT = 110_574.0
#: the percentile stretch of non-uint8 data (of the valid pixels)
STRETCH_PERCENTILES = (2.0, 98.0)


def _rasterio():
    try:
        import rasterio
    except ImportError:  # pragma: no cover - rasterio is a dependency of the geo extra and of CI
        raise ZoomLDMError(
            "reading or writing GeoTIFFs needs rasterio: pip install 'zoomldm[geo]' (or pip install rasterio)"
        ) from None
    return rasterio


@dataclass(frozen=True)
class GeoInfo:
    """The georeference of a raster: CRS (WKT; None when the file has none), geotransform as the six
    affine coefficients ``(a, b, c, d, e, f)`` (x = a·col + b·row + c, y = d·col + e·row + f), size,
    bounds ``(left, bottom, right, top)`` in the CRS, ground resolution (m/px, None without a CRS),
    nodata value, band count and dtype."""

    crs: str | None
    epsg: int | None
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int
    bounds: tuple[float, float, float, float]
    resolution_m: float | None
    geographic: bool
    nodata: float | None
    bands: int
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "crs": self.crs,
            "epsg": self.epsg,
            "transform": list(self.transform),
            "bounds": list(self.bounds),
            "resolution_m": self.resolution_m,
        }


def has_georeference(path: str | Path) -> bool:
    """Whether ``path`` is a raster rasterio opens with a CRS (a GeoTIFF, COG, JPEG2000 with georeference…);
    False for plain images and for files rasterio cannot open."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff", ".jp2", ".img", ".vrt"):
        return False
    try:
        rasterio = _rasterio()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning for plain TIFFs
            with rasterio.open(path) as src:
                return src.crs is not None
    except (ZoomLDMError, Exception):  # noqa: BLE001 - anything rasterio cannot read is not a GeoTIFF here
        return False


def ground_resolution_m(crs: Any, transform: Any, height: int, width: int, where: str = "") -> float:
    """Metres per pixel of a raster (the mean of x and y). Geographic CRSs are converted at the centre
    latitude; a geographic CRS whose centre latitude is not a latitude (|lat| > 90°: no real geotransform)
    is an :class:`InputError`."""
    a, b, _, d, e, _ = (float(v) for v in tuple(transform)[:6])
    px_x, px_y = math.hypot(a, d), math.hypot(b, e)
    if crs.is_geographic:
        lat = transform_xy(transform, width / 2, height / 2)[1]
        if not math.isfinite(lat) or abs(lat) > 90:
            raise InputError(
                f"{where}a geographic CRS ({crs.to_string()}) whose centre 'latitude' is {lat:g}: the file has "
                "no usable geotransform, so its ground resolution is unknown; give --mpp (m/px)"
            )
        mx = px_x * M_PER_DEG_LON * math.cos(math.radians(lat))
        my = px_y * M_PER_DEG_LAT
        return float((mx + my) / 2)
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    return float((px_x + px_y) / 2 * factor)


def transform_xy(transform: Any, col: float, row: float) -> tuple[float, float]:
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    return a * col + b * row + c, d * col + e * row + f


def read_geo_info(path: str | Path, need_resolution: bool = True) -> GeoInfo:
    """The georeference of ``path`` (see :class:`GeoInfo`); a file without a CRS has ``crs=None``. A
    geographic CRS without a usable geotransform is an :class:`InputError` when ``need_resolution`` (the
    ground resolution is then unknown), else ``resolution_m=None``."""
    rasterio = _rasterio()
    path = Path(path)
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(path) as src:
                crs, t = src.crs, src.transform
                res = None
                if crs is not None:
                    try:
                        res = ground_resolution_m(crs, t, src.height, src.width, f"{path.name}: ")
                    except InputError:
                        if need_resolution:
                            raise
                return GeoInfo(
                    crs.to_wkt() if crs is not None else None,
                    crs.to_epsg() if crs is not None else None,
                    (t.a, t.b, t.c, t.d, t.e, t.f),
                    src.width,
                    src.height,
                    tuple(src.bounds),
                    res,
                    bool(crs is not None and crs.is_geographic),
                    src.nodata,
                    src.count,
                    src.dtypes[0],
                )
    except rasterio.errors.RasterioIOError as err:
        raise InputError(f"{path}: not a readable raster ({str(err).splitlines()[0]})") from None


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def band_order(src, path: Path) -> tuple[list[int], int | None, list[str]]:
    """(bands to read as R, G, B; the alpha band or None; notes)."""
    from rasterio.enums import ColorInterp

    interp = list(src.colorinterp)
    count = src.count
    notes = []
    alpha = next((i + 1 for i, c in enumerate(interp) if c == ColorInterp.alpha), None)
    if count == 1:
        notes.append(f"{path.name}: 1 band, read as grey RGB")
        return [1, 1, 1], None, notes
    if count == 2:
        if alpha is None:
            raise InputError(
                f"{path.name}: 2 bands that are not grey + alpha; zoomldm needs RGB (select bands with "
                "gdal_translate -b R -b G -b B)"
            )
        notes.append(f"{path.name}: grey + alpha, read as grey RGB with the alpha as mask")
        return [1, 1, 1], alpha, notes
    colour = {ColorInterp.red: "r", ColorInterp.green: "g", ColorInterp.blue: "b"}
    named = {colour[c]: i + 1 for i, c in enumerate(interp) if c in colour}
    if set(named) == {"r", "g", "b"}:
        order = [named["r"], named["g"], named["b"]]
    else:
        order = [1, 2, 3]
    if order != [1, 2, 3]:
        notes.append(
            f"{path.name}: bands {order} are red, green, blue (by their colour interpretation): reordered"
        )
    if count > 3:
        extra = [i for i in range(1, count + 1) if i not in order and i != alpha]
        what = f"band {alpha} as the valid-data mask (alpha)" if alpha is not None else ""
        if extra:
            what += ("; " if what else "") + f"band(s) {extra} (e.g. NIR) not used"
        notes.append(f"{path.name}: {count} bands, RGB from bands {order}; {what}")
    return order, alpha, notes


def stretch_limits(src, order: list[int], valid_only: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-band percentile limits of a non-uint8 dataset, from a decimated read of at most 1024² px of
    the whole scene (so that every window of it is stretched alike); None for uint8 data."""
    if src.dtypes[0] == "uint8":
        return None
    f = max(1, int(math.ceil(max(src.width, src.height) / 1024)))
    shape = (3, max(1, src.height // f), max(1, src.width // f))
    data = src.read(order, out_shape=shape).astype(np.float64)
    valid = src.dataset_mask(out_shape=shape[1:]) > 0 if valid_only else np.ones(shape[1:], bool)
    if not valid.any():
        return None
    lo, hi = np.percentile(data[:, valid], STRETCH_PERCENTILES, axis=1)
    return lo, hi


def _stretch(data: np.ndarray, limits: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    lo, hi = limits
    scale = np.where(hi > lo, 255.0 / np.maximum(hi - lo, 1e-12), 0.0)
    out = np.clip((data.astype(np.float64) - lo[:, None, None]) * scale[:, None, None], 0, 255)
    return out.round().astype(np.uint8)


def read_window(
    src, order: list[int], alpha: int | None, window=None, out_shape=None, limits=None
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[h, w, 3]`` RGB (invalid pixels 0) and the valid mask of an open dataset's ``window``
    (rasterio ``Window``; ``out_shape = (h, w)`` reads from the overviews when smaller)."""
    kw = {"window": window}
    if out_shape is not None:
        kw["out_shape"] = (3, *out_shape)
    data = src.read(order, **kw)
    mask_kw = {"window": window, "out_shape": tuple(out_shape) if out_shape is not None else None}
    if alpha is not None:
        valid = src.read(alpha, **mask_kw) > 0
    else:
        valid = src.dataset_mask(**mask_kw) > 0  # nodata in every band, or the internal mask
    if limits is not None:
        data = _stretch(data, limits)
    rgb = np.ascontiguousarray(np.moveaxis(data, 0, -1)).astype(np.uint8, copy=False)
    rgb[~valid] = 0
    return rgb, valid


def read_rgb(
    path: str | Path, window: tuple[int, int, int, int] | None = None, quiet: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The raster (or ``window = (x, y, w, h)`` of it) as uint8 ``[h, w, 3]`` RGB and its valid-data mask
    ``[h, w]`` (bool), with the conversions of the module docstring (each noted in one line unless
    ``quiet``). An all-nodata raster or window is an :class:`InputError`."""
    rasterio = _rasterio()
    from rasterio.windows import Window

    path = Path(path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            src = rasterio.open(path)
        except rasterio.errors.RasterioIOError as err:
            raise InputError(f"{path}: not a readable raster ({str(err).splitlines()[0]})") from None
        with src:
            order, alpha, notes = band_order(src, path)
            win = Window(*window) if window is not None else None
            limits = stretch_limits(src, order)
            rgb, valid = read_window(src, order, alpha, win, limits=limits)
            dtype = src.dtypes[0]
    if not valid.any():
        where = "the window" if window is not None else "every pixel"
        raise InputError(f"{path.name}: {where} is nodata; there is nothing to read (check the nodata value)")
    if dtype != "uint8":
        notes.append(
            f"{path.name}: {dtype} bands stretched to 8 bits (per band, {STRETCH_PERCENTILES[0]:g}–"
            f"{STRETCH_PERCENTILES[1]:g} % percentiles of the valid pixels)"
        )
    if not quiet:
        for n in notes:
            _note(n)
    return rgb, valid


def scaled_transform(transform: tuple, factor: float, origin_px: tuple[int, int] = (0, 0)) -> tuple:
    """The geotransform of an image ``factor``× finer than the one ``transform`` describes, starting at
    pixel ``origin_px = (col, row)`` of the finer image (a region request)."""
    a, b, c, d, e, f = (float(v) for v in transform)
    a2, b2, d2, e2 = a / factor, b / factor, d / factor, e / factor
    col, row = origin_px
    return (a2, b2, a2 * col + b2 * row + c, d2, e2, d2 * col + e2 * row + f)


def write_cog(
    path: str | Path,
    source: str | Path | np.ndarray,
    *,
    crs: str | None = None,
    transform: tuple | None = None,
    compression: str = "jpeg",
    metadata: dict[str, str] | None = None,
    xmp: str | None = None,
) -> Path:
    """Write a Cloud-Optimized GeoTIFF at ``path`` from ``source`` (a uint8 ``[H, W, 3]`` array, or a TIFF
    file such as the pyramidal TIFF a large-image run streamed: copied block by block by GDAL), with
    ``crs`` + ``transform`` when given. ``compression``: jpeg (quality 90), zlib/deflate or none;
    ``metadata``: dataset tags; ``xmp``: an XMP packet for the first IFD (zoomldm's provenance record)."""
    rasterio = _rasterio()
    from affine import Affine
    from rasterio import shutil as rio_shutil

    path = Path(path)
    codec = {"jpeg": "JPEG", "zlib": "DEFLATE", "deflate": "DEFLATE", "none": "NONE"}.get(compression)
    if codec is None:
        raise ZoomLDMError(f"COG compression must be jpeg, zlib or none; got {compression!r}")
    options = dict(
        driver="COG", blocksize=256, compress=codec, overview_resampling="average", BIGTIFF="IF_SAFER"
    )
    if codec == "JPEG":
        options["quality"] = 90
    tmp = path.with_name(f".{path.name}.partial")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        if isinstance(source, np.ndarray):
            image = np.ascontiguousarray(source)
            height, width = image.shape[:2]
            profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8")
            if crs is not None:
                profile.update(crs=crs, transform=Affine(*transform))
            import warnings

            from rasterio.io import MemoryFile

            with MemoryFile() as mem, warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # synthetic: none
                with mem.open(**profile) as dst:
                    dst.write(np.moveaxis(image, -1, 0))
                    if metadata:
                        dst.update_tags(**metadata)
                with mem.open() as src:
                    rio_shutil.copy(src, tmp, **options)
        else:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # NotGeoreferencedWarning: the georeference comes next
                with rasterio.open(source) as src:
                    vrt = _labelled_vrt(src, crs, transform, metadata, xmp)  # the file's pixels, labelled
                with rasterio.open(vrt) as labelled:
                    rio_shutil.copy(labelled, tmp, **options)
    tmp.replace(path)
    return path


def _labelled_vrt(
    src, crs: str | None, transform: tuple | None, metadata: dict | None = None, xmp: str | None = None
) -> str:
    """A VRT (XML text) of ``src``'s first three bands with ``crs`` / ``transform`` and dataset ``metadata``
    set (no resampling; the COG driver writes the metadata into the first IFD)."""
    from xml.sax.saxutils import escape

    lines = [f'<VRTDataset rasterXSize="{src.width}" rasterYSize="{src.height}">']
    if metadata:
        lines.append("  <Metadata>")
        lines += [f'    <MDI key="{escape(k)}">{escape(str(v))}</MDI>' for k, v in metadata.items()]
        lines.append("  </Metadata>")
    if xmp:  # GDAL's xml:XMP domain: the GeoTIFF driver writes it as the XMP tag
        lines += ['  <Metadata domain="xml:XMP" format="xml">', xmp, "  </Metadata>"]
    if crs is not None:
        lines.append(f"  <SRS>{escape(crs)}</SRS>")
        a, b, c, d, e, f = transform
        lines.append(f"  <GeoTransform>{c!r}, {a!r}, {b!r}, {f!r}, {d!r}, {e!r}</GeoTransform>")
    for band in (1, 2, 3):
        lines += [
            f'  <VRTRasterBand dataType="Byte" band="{band}">',
            "    <SimpleSource>",
            f'      <SourceFilename relativeToVRT="0">{escape(str(src.name))}</SourceFilename>',
            f"      <SourceBand>{band}</SourceBand>",
            "    </SimpleSource>",
            "  </VRTRasterBand>",
        ]
    lines.append("</VRTDataset>")
    return "\n".join(lines)


def validate_cog(path: str | Path) -> list[str]:
    """The layout errors of a Cloud-Optimized GeoTIFF (an empty list when valid), the checks of GDAL's
    ``validate_cloud_optimized_geotiff.py``: tiled; overviews when larger than a tile, each tiled and
    each half the size of the previous; the IFDs of all levels before the image data; the data of the
    smaller levels before that of the larger."""
    import tifffile

    errors: list[str] = []
    with tifffile.TiffFile(path) as tif:
        pages = [p for p in tif.pages if not _is_mask(p)]
        main = pages[0]
        if not main.is_tiled:
            errors.append("the full-resolution image is not tiled")
        if max(main.imagewidth, main.imagelength) > 512 and len(pages) < 2:
            errors.append("no overviews (needed above 512 px)")
        for prev, page in zip(pages, pages[1:], strict=False):
            if not page.is_tiled:
                errors.append(f"overview {page.imagewidth}×{page.imagelength} is not tiled")
            if page.imagewidth > (prev.imagewidth + 1) // 2 + 1:
                errors.append(f"overview {page.imagewidth} px is not half of {prev.imagewidth} px")
        first_data = min(min(o for o in p.dataoffsets if o) for p in pages)
        if any(p.offset > first_data for p in pages):
            errors.append("an IFD comes after image data (IFDs must be at the start)")
        starts = [min(o for o in p.dataoffsets if o) for p in pages]
        if any(a < b for a, b in zip(starts, starts[1:], strict=False)):
            errors.append("the data of a smaller overview comes after that of a larger level")
    return errors


def _is_mask(page) -> bool:
    return bool(getattr(page, "subfiletype", 0) & 4)  # FILETYPE_MASK
