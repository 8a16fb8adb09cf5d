"""Output formats: PNG with provenance, contact sheets, pyramidal (OME-)TIFF, and the deep-zoom viewer."""

from .images import contact_sheet, package_version, provenance, read_png_metadata, save_png
from .tiff import PyramidalTiffWriter, level_shapes, write_tiff
from .viewer import ViewerServer, serve

__all__ = [
    "PyramidalTiffWriter",
    "ViewerServer",
    "contact_sheet",
    "level_shapes",
    "package_version",
    "provenance",
    "read_png_metadata",
    "save_png",
    "serve",
    "write_tiff",
]
