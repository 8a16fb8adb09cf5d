"""zoomldm: ZoomLDM multi-scale latent diffusion (Yellapragada, Graikos et al., CVPR 2025) on diffusers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import CheckpointError, ConfigError, ZoomLDMError
from .scales import PATHOLOGY, SATELLITE, Magnification

__version__ = "0.1.0"

__all__ = [
    "PATHOLOGY",
    "SATELLITE",
    "CheckpointError",
    "ConfigError",
    "Magnification",
    "ZoomLDMConfig",
    "ZoomLDMError",
    "ZoomLDMPipeline",
]

if TYPE_CHECKING:
    from .config import ZoomLDMConfig
    from .pipeline import ZoomLDMPipeline


def __getattr__(name: str):  # lazy: `import zoomldm` stays light (no torch/diffusers) for the CLI's --help
    if name == "ZoomLDMPipeline":
        from .pipeline import ZoomLDMPipeline

        return ZoomLDMPipeline
    if name == "ZoomLDMConfig":
        from .config import ZoomLDMConfig

        return ZoomLDMConfig
    raise AttributeError(name)
