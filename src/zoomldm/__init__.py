"""zoomldm: ZoomLDM multi-scale latent diffusion (Yellapragada, Graikos et al., CVPR 2025) on diffusers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import CheckpointError, ConfigError, InputError, OutputError, ZoomLDMError
from .scales import PATHOLOGY, SATELLITE, Magnification

__version__ = "0.1.0"

__all__ = [
    "PATHOLOGY",
    "SATELLITE",
    "CheckpointError",
    "ConfigError",
    "InputError",
    "Magnification",
    "OutputError",
    "ZoomLDMConfig",
    "ZoomLDMError",
    "ZoomLDMPipeline",
    "DecodeConfig",
    "InversionConfig",
    "JointSamplingConfig",
    "LargeImageResult",
    "PostprocessConfig",
    "SRConfig",
    "extract_features",
    "prepare",
    "train_mil",
]

if TYPE_CHECKING:
    from .config import ZoomLDMConfig
    from .data.prepare import prepare
    from .features.extract import extract_features
    from .features.mil import train_mil
    from .pipeline import ZoomLDMPipeline
    from .sampling.decode import DecodeConfig
    from .sampling.inversion import InversionConfig
    from .sampling.joint import LargeImageResult
    from .sampling.newton import JointSamplingConfig
    from .sampling.postprocess import PostprocessConfig
    from .sampling.superres import SRConfig

#: the one function behind each data command: name -> module (imported on first use)
_COMMAND_FUNCTIONS = {
    "prepare": ".data.prepare",
    "extract_features": ".features.extract",
    "train_mil": ".features.mil",
}

_SAMPLING_NAMES = {
    "DecodeConfig": ".sampling.decode",
    "InversionConfig": ".sampling.inversion",
    "JointSamplingConfig": ".sampling.newton",
    "LargeImageResult": ".sampling.joint",
    "PostprocessConfig": ".sampling.postprocess",
    "SRConfig": ".sampling.superres",
}


def __getattr__(name: str):  # lazy: `import zoomldm` stays light (no torch/diffusers) for the CLI's --help
    if name == "ZoomLDMPipeline":
        from .pipeline import ZoomLDMPipeline

        return ZoomLDMPipeline
    if name == "ZoomLDMConfig":
        from .config import ZoomLDMConfig

        return ZoomLDMConfig
    if name in _SAMPLING_NAMES:  # what ZoomLDMPipeline.generate_large / .super_resolve take and return
        import importlib

        return getattr(importlib.import_module(_SAMPLING_NAMES[name], __name__), name)
    if name in _COMMAND_FUNCTIONS:
        import importlib

        return getattr(importlib.import_module(_COMMAND_FUNCTIONS[name], __name__), name)
    raise AttributeError(name)
