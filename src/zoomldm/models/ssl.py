"""Which SSL encoder embeds a model's image inputs: the one named, else the model's own.

A reference image or a super-resolution input is embedded tile by tile before the Summarizer sees it.
The embedded offline model was trained on the 64-d grids of its own encoder
(:func:`zoomldm.models.embedded.embedded_encoder`); every other model takes UNI (pathology) unless the
caller names another encoder or passes an encoder object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoints.embedded import EMBEDDED_MODELS, embedded_name
from ..errors import ConfigError, InputError
from .embedded import embedded_encoder
from .encoders import SSLEncoder, build_encoder


def default_encoder(checkpoint: Any) -> str:
    """The SSL encoder a model's references are embedded with when none is named: the embedded offline
    model's own encoder for that model (its Summarizer was trained on its 64-d grids), UNI otherwise.
    ``checkpoint``: the checkpoint id/path, or a loaded model (its provenance names where it came from)."""
    if hasattr(checkpoint, "provenance"):
        checkpoint = checkpoint.provenance.get("checkpoint")
    return embedded_name(checkpoint) or "uni"


def build_ssl_encoder(encoder: Any, weights: str | Path | None, device: Any, channels: int) -> SSLEncoder:
    """``encoder``: a name (``uni``, ``dinov2``, ``timm:<name>``, ``embedded``: the embedded offline model's
    own; ``weights`` a local file or ``"random"``) or an encoder object with ``.dim`` and ``.embed``
    (:class:`~zoomldm.models.encoders.SSLEncoder`), checked against the model's SSL width ``channels``."""
    if isinstance(encoder, str) and encoder in EMBEDDED_MODELS and weights is None:
        encoder = embedded_encoder(str(device), name=encoder)
    elif isinstance(encoder, str):
        if weights not in (None, "random") and not Path(weights).is_file():
            raise InputError(f"{weights}: encoder weights not found (pass the local weights file)")
        encoder = build_encoder(encoder, weights=weights, device=device)
    elif not (hasattr(encoder, "dim") and hasattr(encoder, "embed")):
        raise ConfigError(
            f"encoder must be a name (uni, dinov2, timm:<name>) or an SSL encoder; got {type(encoder).__name__}"
        )
    if encoder.dim != channels:
        name = getattr(encoder, "name", type(encoder).__name__)
        raise ConfigError(f"encoder {name} gives {encoder.dim}-d embeddings, the model expects {channels}")
    return encoder
