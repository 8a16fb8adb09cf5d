"""The package's embedded offline model as a ready pipeline, with its own SSL encoder."""

from __future__ import annotations

from ..checkpoints.embedded import EMBEDDED, embedded_model_path
from ..models.embedded import embedded_encoder
from ..models.encoders import SSLEncoder
from .patches import ZoomLDMPipeline


def load_embedded(device: str = "cpu", name: str = EMBEDDED) -> tuple[ZoomLDMPipeline, SSLEncoder] | None:
    """The embedded pipeline ``name`` (``embedded``: pathology; ``embedded-naip``: aerial) in float32 and its
    SSL encoder, or None when none is shipped."""
    path = embedded_model_path(name=name)
    if path is None:
        return None
    pipe = ZoomLDMPipeline.from_pretrained(path, device=device, dtype="float32")
    return pipe, embedded_encoder(device, name=name)
