"""Deprecated: moved to :mod:`zoomldm.viewer.server` (this path goes in 0.2)."""

import warnings

warnings.warn(
    "zoomldm.io.viewer moved to zoomldm.viewer (the old path goes in 0.2)", DeprecationWarning, stacklevel=2
)

from ..viewer.server import *  # noqa: E402, F403
from ..viewer.server import (  # noqa: E402, F401
    STATIC_DIR,
    ExplorerSource,
    SlideSource,
    ViewerServer,
    open_image,
    serve,
)
