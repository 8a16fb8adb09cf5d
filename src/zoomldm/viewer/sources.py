"""The viewer's tile sources: an existing image (OpenSlide's Deep Zoom) or the zoom explorer.

:class:`SlideSource` serves a pyramidal TIFF or any image OpenSlide's ``open_slide`` reads (``zoomldm
view``); :class:`ExplorerSource` serves an :class:`~zoomldm.viewer.explorer.Explorer` (``zoomldm view
--generate``). Both give the server a name, a format, a ``.dzi``, a caption, an ``info.json`` record and
``tile(level, col, row)``.
"""

from __future__ import annotations

import html
import io
import os
import threading
from pathlib import Path
from typing import Any

from ..errors import ZoomLDMError


def open_image(path: str | os.PathLike[str]) -> Any:
    """Open ``path`` with OpenSlide (pyramidal TIFF and slide formats) or, for plain images, ``ImageSlide``."""
    import openslide

    path = Path(path)
    if not path.is_file():
        raise ZoomLDMError(f"{path}: no such file; expected a TIFF or PNG written by zoomldm")
    try:
        return openslide.open_slide(str(path))
    except (openslide.OpenSlideError, OSError, ValueError) as err:
        raise ZoomLDMError(f"{path}: cannot be opened as a slide or image ({err})") from err


def _caption(slide: Any, path: Path) -> tuple[str, dict[str, Any]]:
    import openslide

    width, height = slide.dimensions
    mpp = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
    info: dict[str, Any] = {"name": path.name, "width": width, "height": height, "levels": slide.level_count}
    info["mpp"] = float(mpp) if mpp else None
    info["provenance"] = _tiff_provenance(path)
    text = f"{path.name} — {width}×{height} px, {slide.level_count} levels"
    if info["mpp"]:
        text += f", {info['mpp']:.4g} µm/px"
    return html.escape(text), info


def _tiff_provenance(path: Path) -> dict[str, Any] | None:
    """The provenance record of a zoomldm TIFF (XMP packet, or the older JSON ImageDescription), else None.

    Read with :func:`zoomldm.io.tiff.read_provenance`: since the provenance left the ImageDescription
    (tifffile took that JSON for its own series metadata), OpenSlide's ``tiff.ImageDescription`` no longer
    holds it."""
    from ..io.tiff import read_provenance

    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        return read_provenance(path)
    except ZoomLDMError:  # the slide opened, so the pixels are fine; a caption without provenance will do
        return None


class SlideSource:
    """Deep Zoom tiles of an existing image (openslide-python's ``DeepZoomGenerator``), as ``zoomldm view``."""

    name = "slide"
    format = "jpeg"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        self.image_path = Path(path)
        self.slide = open_image(self.image_path)
        self.deepzoom = DeepZoomGenerator(self.slide, tile_size=254, overlap=1, limit_bounds=False)
        self.caption, self.info = _caption(self.slide, self.image_path)
        self.dzi = self.deepzoom.get_dzi("jpeg").encode()
        # OpenSlide itself is thread-safe; ImageSlide (PIL) is not, so plain images are read under a lock
        self.tile_lock = threading.Lock() if isinstance(self.slide, openslide.ImageSlide) else None

    def tile(self, level: int, col: int, row: int) -> bytes | None:
        """One Deep Zoom tile as JPEG bytes, or None when the address is outside the pyramid."""
        if level >= self.deepzoom.level_count:
            return None
        cols, rows = self.deepzoom.level_tiles[level]
        if col >= cols or row >= rows:
            return None
        if self.tile_lock is not None:
            with self.tile_lock:
                image = self.deepzoom.get_tile(level, (col, row))
        else:
            image = self.deepzoom.get_tile(level, (col, row))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()

    def close(self) -> None:
        self.slide.close()


class ExplorerSource:
    """Deep Zoom tiles of a :class:`~zoomldm.viewer.explorer.Explorer`: the image, then generated levels."""

    name = "image"
    format = "png"

    def __init__(self, explorer: Any, tile_wait: float = 20.0) -> None:
        self.explorer = explorer
        self.tile_wait = tile_wait
        self.info = explorer.info()
        self.dzi = explorer.geometry.dzi("png")
        levels = self.info["levels"]
        img = self.info["image"]
        self.caption = html.escape(
            f"{self.info['name']} — {img['width']}×{img['height']} px at {levels[0]}, generated on zoom "
            f"down to {levels[-1]} ({self.info['width']}×{self.info['height']} px), seed {self.info['seed']}"
        )

    def tile(self, level: int, col: int, row: int) -> bytes | None:
        """One tile as PNG bytes (None outside the pyramid); raises TimeoutError while it generates."""
        return self.explorer.tile_png(level, col, row, timeout=self.tile_wait)

    def close(self) -> None:
        self.explorer.close()
