"""Deprecated: moved to :mod:`zoomldm.viewer.explorer` (this path goes in 0.2)."""

import warnings

warnings.warn(
    "zoomldm.io.explorer moved to zoomldm.viewer.explorer (the old path goes in 0.2)",
    DeprecationWarning,
    stacklevel=2,
)

from ..viewer.explorer import *  # noqa: E402, F403
from ..viewer.explorer import (  # noqa: E402, F401
    FORMAT_VERSION,
    TILE_SIZE,
    BlockError,
    Explorer,
    Geometry,
    block_seed,
    downsample2,
    feather,
    load_model,
    model_digest,
    psnr,
    seam_statistics,
)
