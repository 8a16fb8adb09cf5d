"""Physical size of a slide's level-0 pixel from its metadata (CONVENTIONS "Slides").

:class:`Resolution` and the lookups the readers of :mod:`.readers` use: OpenSlide-style properties
(:func:`resolution_from_properties`), TIFF ``XResolution`` and, for GeoTIFF, ``ModelPixelScaleTag``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Resolution:
    """Physical size of one level-0 pixel: ``value`` in ``unit`` ("um" or "m"), and where it came from."""

    value: float
    unit: str
    source: str


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
