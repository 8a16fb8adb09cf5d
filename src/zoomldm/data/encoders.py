"""The SSL tile encoders that data preparation embeds with. They live with the models, in
:mod:`zoomldm.models.encoders`; this module keeps the old import path ``zoomldm.data.encoders`` for one
release (it goes in 0.2), with a DeprecationWarning."""

import warnings

from ..models.encoders import (  # noqa: F401
    DOMAIN_ENCODERS,
    ENCODERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderSpec,
    SSLEncoder,
    available_encoders,
    build_encoder,
    encode_region_grid,
)

warnings.warn(
    "zoomldm.data.encoders moved to zoomldm.models.encoders (the old path goes in 0.2)",
    DeprecationWarning,
    stacklevel=2,
)
