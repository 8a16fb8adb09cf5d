"""The Python API: :class:`ZoomLDMPipeline` — the loaded model with patch sampling, large images and
super-resolution — and :func:`load_embedded`.

* :mod:`.patches` — ``ZoomLDMPipeline`` itself: the guided denoising loop and ``__call__`` (patches);
* :mod:`.large` — ``generate_large``, ``super_resolve``, ``plan_large`` (what ``zoomldm generate`` /
  ``superres`` call);
* :mod:`.cdm` — a CDM given as a model or a path, for reference-free sampling;
* :mod:`.embedded` — the embedded offline model as a pipeline.

Loading, saving and the networks are :class:`zoomldm.models.bundle.ZoomLDMModel`'s, which the
pipeline extends; training, data preparation and features take that model.
"""

from ..models.bundle import CDM_DIR, FORMAT_VERSION, ZoomLDMModel, to_uint8
from .embedded import load_embedded
from .patches import MAX_GUIDANCE, MAX_STEPS, PatchSamplingOutput, ZoomLDMPipeline

__all__ = [
    "CDM_DIR",
    "FORMAT_VERSION",
    "MAX_GUIDANCE",
    "MAX_STEPS",
    "PatchSamplingOutput",
    "ZoomLDMModel",
    "ZoomLDMPipeline",
    "load_embedded",
    "to_uint8",
]
