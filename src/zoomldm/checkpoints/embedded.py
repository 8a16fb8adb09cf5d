"""The package's embedded offline model as files: where it is, and that it is intact.

Small trained ZoomLDMs ship under ``zoomldm/assets/``: ``tiny_brca/`` (pathology, the name ``embedded``) and
``tiny_naip/`` (aerial, ``embedded-naip``); ``tools/train_embedded_model.py [--domain satellite]`` trains
them with the project's own commands: our pipeline format (``zoomldm.json``, ``unet/``, ``vae/``,
``summarizer/``, ``cdm/``), its SSL encoder (``encoder.safetensors`` + ``encoder.json``) and
``MODEL_CARD.md``, whose *Files* table lists the sha256 of every other file. Nothing here downloads.

:func:`embedded_model_path` returns the folder (or None when the package ships none);
:func:`verify_embedded_model` checks every file against the card, so damaged or edited weights are a
one-line :class:`~zoomldm.errors.CheckpointError`, never silently different samples. Building the model
and its encoder from these files is :mod:`zoomldm.models.embedded`'s.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..fsutil import file_sha256

NAME = "tiny_brca"
CARD = "MODEL_CARD.md"
#: the name that selects this model wherever a checkpoint is taken (``--checkpoint embedded``,
#: ``ZoomLDMPipeline.from_pretrained("embedded")``, ``$ZOOMLDM_CHECKPOINT=embedded``)
EMBEDDED = "embedded"
#: the embedded aerial model (4 satellite levels, trained on naip_001.jpg): ``--checkpoint embedded-naip``
EMBEDDED_NAIP = "embedded-naip"
#: every embedded model: its name → its folder under ``zoomldm/assets/``
EMBEDDED_MODELS = {EMBEDDED: NAME, EMBEDDED_NAIP: "tiny_naip"}

_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*([0-9a-f]{64})\s*\|")


def _asset_dir(name: str = EMBEDDED) -> Path:
    if name not in EMBEDDED_MODELS:
        raise CheckpointError(
            f"no embedded model named {name!r}; the embedded models are {', '.join(EMBEDDED_MODELS)}"
        )
    return Path(str(resources.files("zoomldm.assets").joinpath(EMBEDDED_MODELS[name])))


def card_hashes(card: str | Path) -> dict[str, str]:
    """The *Files* table of a model card: relative path → sha256 (rows ``| `path` | <sha256> | … |``)."""
    text = Path(card).read_text(encoding="utf-8")
    return {m.group(1): m.group(2) for line in text.splitlines() if (m := _ROW.match(line.strip()))}


def verify_embedded_model(path: str | Path) -> dict[str, str]:
    """Check every file listed in ``path/MODEL_CARD.md`` against its sha256; return the table.

    Raises:
        CheckpointError: no card, a card without a *Files* table, a listed file missing, or a hash
            mismatch (one line naming the file).
    """
    path = Path(path)
    card = path / CARD
    if not card.is_file():
        raise CheckpointError(f"{path}: no {CARD} (reinstall zoomldm or rerun tools/train_embedded_model.py)")
    table = card_hashes(card)
    if not table:
        raise CheckpointError(
            f"{card}: no Files table with sha256 hashes (rerun tools/train_embedded_model.py)"
        )
    for name, digest in table.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in {CARD} but missing (reinstall zoomldm)")
        if file_sha256(file) != digest:
            raise CheckpointError(
                f"{file}: sha256 differs from {CARD} (the embedded model is damaged or was edited; reinstall zoomldm)"
            )
    return table


def embedded_model_path(verify: bool = True, name: str = EMBEDDED) -> Path | None:
    """The folder of the embedded model ``name`` (:data:`EMBEDDED_MODELS`), or None when this installation
    ships none.

    Args:
        verify: check the files against the model card's sha256 first (:func:`verify_embedded_model`).
        name: ``embedded`` (pathology, tiny_brca) or ``embedded-naip`` (aerial, tiny_naip).
    """
    path = _asset_dir(name)
    if not (path / "zoomldm.json").is_file():
        return None
    if verify:
        verify_embedded_model(path)
    return path


def encoder_spec(path: str | Path) -> dict[str, Any]:
    """``encoder.json`` of the embedded model: ``{"name": timm name, "options": timm kwargs}``."""
    spec = json.loads((Path(path) / "encoder.json").read_text())
    if not isinstance(spec, dict) or "name" not in spec:
        raise CheckpointError(f"{path}/encoder.json: not an encoder description (reinstall zoomldm)")
    return spec


def embedded_name(checkpoint: str | Path | None) -> str | None:
    """The name of the embedded model ``checkpoint`` selects (one of :data:`EMBEDDED_MODELS`, by name or
    by its folder), or None."""
    if checkpoint is None:
        return None
    if str(checkpoint) in EMBEDDED_MODELS:
        return str(checkpoint)
    for name in EMBEDDED_MODELS:
        path = embedded_model_path(verify=False, name=name)
        try:
            if path is not None and Path(checkpoint).expanduser().resolve() == path.resolve():
                return name
        except (OSError, ValueError):
            return None
    return None


def is_embedded(checkpoint: str | Path | None) -> bool:
    """True when ``checkpoint`` names an embedded model (:data:`EMBEDDED_MODELS`, or one's folder)."""
    return embedded_name(checkpoint) is not None
