"""Output formats: PNG with provenance, contact sheets, pyramidal (OME-)TIFF.

The deep-zoom viewer moved to :mod:`zoomldm.viewer`; ``zoomldm.io.serve`` and ``zoomldm.io.ViewerServer``
still work until 0.2, with a DeprecationWarning.
"""

from typing import Any

from .images import contact_sheet, package_version, provenance, read_png_metadata, save_png
from .tiff import PyramidalTiffWriter, level_shapes, write_tiff

__all__ = [
    "PyramidalTiffWriter",
    "contact_sheet",
    "level_shapes",
    "package_version",
    "provenance",
    "read_png_metadata",
    "save_png",
    "write_tiff",
]

_MOVED = ("ViewerServer", "serve")


def __getattr__(name: str) -> Any:
    """``serve`` and ``ViewerServer``, moved to :mod:`zoomldm.viewer.server` (the old names go in 0.2)."""
    if name in _MOVED:
        import warnings

        warnings.warn(
            f"zoomldm.io.{name} moved to zoomldm.viewer.{name} (the old path goes in 0.2)",
            DeprecationWarning,
            stacklevel=2,
        )
        from ..viewer.server import ViewerServer, serve

        return {"ViewerServer": ViewerServer, "serve": serve}[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
