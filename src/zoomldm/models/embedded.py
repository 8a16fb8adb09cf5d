"""The package's embedded offline model: a small trained ZoomLDM under ``zoomldm/assets/tiny_brca/``.

``tools/train_embedded_model.py`` trains it with the project's own commands (``train-vae``, ``prepare``,
``train``, ``train-cdm``) on the MIT-licensed H&E image ``brca_001.jpeg``. Its files, their sha256 check
and the name ``embedded`` are :mod:`zoomldm.checkpoints.embedded`'s; which model commands load when none
is named is :func:`zoomldm.checkpoints.default_checkpoint`. This module builds the model's own SSL
encoder (a seeded random 64-d ViT, so that inputs are embedded exactly as its training store was).

The names that moved to :mod:`zoomldm.checkpoints` are re-exported here; ``load_embedded`` moved to
:func:`zoomldm.pipeline.load_embedded` (it builds a pipeline) and stays reachable here, with a
DeprecationWarning, for one release (it goes in 0.2).
"""

from __future__ import annotations

from typing import Any

from ..checkpoints.default import (  # noqa: F401 (the old names of this module)
    CHECKPOINT_ENV,
    HUB_TIMEOUT_S,
    PUBLISHED,
    default_checkpoint,
    published_available,
)
from ..checkpoints.embedded import (  # noqa: F401
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
from ..errors import CheckpointError
from .encoders import SSLEncoder, build_encoder


def embedded_encoder(device: str = "cpu", dtype: Any = None, name: str = EMBEDDED) -> SSLEncoder:
    """The embedded model ``name``'s own SSL encoder (its store was prepared with it; grids of other encoders
    do not fit its 64-d Summarizer input); ``dtype``: autocast dtype, as
    :func:`~zoomldm.models.encoders.build_encoder`."""
    path = embedded_model_path(name=name)
    if path is None:
        raise CheckpointError(
            f"no embedded model {name!r} in this installation (zoomldm/assets/{EMBEDDED_MODELS[name]}); "
            "reinstall zoomldm"
        )
    spec = encoder_spec(path)
    return build_encoder(
        spec["name"],
        weights=str(path / "encoder.safetensors"),
        device=device,
        dtype=dtype,
        **spec.get("options", {}),
    )


def __getattr__(name: str) -> Any:  # the one-release alias of a name that moved up to the pipeline
    if name == "load_embedded":
        import warnings

        warnings.warn(
            "zoomldm.models.embedded.load_embedded moved to zoomldm.pipeline.load_embedded "
            "(the old path goes in 0.2)",
            DeprecationWarning,
            stacklevel=2,
        )
        from ..pipeline import load_embedded

        return load_embedded
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
