"""The reader backends, one small class per library, all behind :class:`~.reader_base.SlideReader`.

:class:`OpenSlideReader` (vendor WSI formats, generic tiled TIFF), :class:`TiffSlideReader` (its
pure-python fallback), :class:`TifffileReader` (pyramidal or flat TIFF, GeoTIFF) and :class:`PillowReader`
(PNG / JPEG with an in-memory 2× pyramid); :func:`~.readers.open_image` chooses among them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ZoomLDMError
from .reader_base import SlideReader
from .resolution import Resolution, _geotiff_resolution, _tiff_resolution, resolution_from_properties


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


class RasterioReader(SlideReader):
    """Georeferenced rasters (GeoTIFF, COG, …) through rasterio (:mod:`zoomldm.io.geotiff`): level 0 and
    its internal overviews as levels; m/px from the CRS and geotransform (degrees converted at the scene's
    latitude); bands chosen and ordered as documented there (grey, RGB + NIR, RGBA, B-G-R, non-uint8 data
    stretched with limits of the whole scene); nodata / masked pixels read as 0, which the satellite
    content mask counts as no data (regions below the valid-data threshold are skipped). ``geo`` keeps
    the georeference, recorded per slide by ``zoomldm prepare``."""

    backend = "rasterio"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        import warnings

        import rasterio

        from ..errors import InputError
        from ..io.geotiff import band_order, read_geo_info, stretch_limits

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._src = rasterio.open(str(path))
        try:
            if self._src.crs is None:  # a pixel scale without a CRS: the tifffile backend reads those tags
                raise ZoomLDMError(f"{self.path.name}: no coordinate reference system")
            self._order, self._alpha, self.notes = band_order(self._src, self.path)
            self._limits = stretch_limits(self._src, self._order)
            try:
                self.geo = read_geo_info(path)
                self.metadata_resolution = Resolution(
                    self.geo.resolution_m, "m", "GeoTIFF georeference (rasterio)"
                )
            except InputError as err:  # no usable geotransform: --mpp must give the resolution
                self.geo, self.metadata_resolution = None, None
                self.notes.append(str(err))
        except BaseException:
            self._src.close()
            raise
        w, h = self._src.width, self._src.height
        factors = [1] + list(self._src.overviews(1))
        self.level_dimensions = [(max(1, w // f), max(1, h // f)) for f in factors]
        self.level_downsamples = [w / dw for dw, _ in self.level_dimensions]

    def _read_level(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        from rasterio.windows import Window

        from ..io.geotiff import read_window

        ds = self.level_downsamples[level]
        window = Window(x0, y0, width * ds, height * ds)
        rgb, _ = read_window(self._src, self._order, self._alpha, window, (height, width), self._limits)
        return rgb

    def close(self) -> None:
        self._src.close()


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
