"""Checkpoints: which model a name means, and the authors' CompVis-LDM format in.

* :mod:`.sources` — a local folder in our format, an official file, a hub id (``brca``, ``naip``,
  ``org/name[/subfolder]``) or ``embedded`` → a :class:`CheckpointSource` (hub download with its cache);
* :mod:`.default` — the one rule for the model to use when none is named (:func:`default_checkpoint`);
* :mod:`.embedded` — the package's embedded offline model as files, sha256-checked against its card;
* :mod:`.official` — the authors' checkpoint keys, split and converted with diffusers' own converters.

This package reads and converts tensors and resolves names; building the networks from them is
:mod:`zoomldm.models`' (``ZoomLDMModel.from_official`` / ``from_pretrained``).
"""

from .default import CHECKPOINT_ENV, HUB_TIMEOUT_S, PUBLISHED, default_checkpoint, published_available
from .embedded import (
    CARD,
    EMBEDDED,
    EMBEDDED_MODELS,
    EMBEDDED_NAIP,
    NAME,
    card_hashes,
    embedded_model_path,
    embedded_name,
    encoder_spec,
    is_embedded,
    verify_embedded_model,
)
from .official import (
    EMA_META,
    EMA_PREFIX,
    HUB_REPO,
    OFFICIAL_SUFFIXES,
    SCHEDULE_KEYS,
    SUMMARIZER_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    OfficialWeights,
    convert_official,
    convert_unet,
    convert_vae,
    ema_key,
    guess_preset,
    load_into,
    read_state_dict,
    track_sources,
)
from .sources import CheckpointSource, file_sha256, resolve_checkpoint

__all__ = [
    "CARD",
    "CHECKPOINT_ENV",
    "EMA_META",
    "EMA_PREFIX",
    "EMBEDDED",
    "EMBEDDED_MODELS",
    "EMBEDDED_NAIP",
    "HUB_REPO",
    "HUB_TIMEOUT_S",
    "NAME",
    "OFFICIAL_SUFFIXES",
    "PUBLISHED",
    "SCHEDULE_KEYS",
    "SUMMARIZER_PREFIX",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "CheckpointSource",
    "OfficialWeights",
    "card_hashes",
    "convert_official",
    "convert_unet",
    "convert_vae",
    "default_checkpoint",
    "ema_key",
    "embedded_model_path",
    "embedded_name",
    "encoder_spec",
    "file_sha256",
    "guess_preset",
    "is_embedded",
    "load_into",
    "published_available",
    "read_state_dict",
    "resolve_checkpoint",
    "track_sources",
    "verify_embedded_model",
]
