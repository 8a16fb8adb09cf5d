"""The package's embedded offline model as files: where it is, and that it is intact.

A small trained ZoomLDM ships under ``zoomldm/assets/tiny_brca/`` (``tools/train_embedded_model.py``
trains it with the project's own commands): our pipeline format (``zoomldm.json``, ``unet/``, ``vae/``,
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

_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*([0-9a-f]{64})\s*\|")


def _asset_dir() -> Path:
    return Path(str(resources.files("zoomldm.assets").joinpath(NAME)))


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


def embedded_model_path(verify: bool = True) -> Path | None:
    """The embedded model's folder, or None when this installation ships none.

    Args:
        verify: check the files against the model card's sha256 first (:func:`verify_embedded_model`).
    """
    path = _asset_dir()
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


def is_embedded(checkpoint: str | Path | None) -> bool:
    """True when ``checkpoint`` names the embedded model (the name :data:`EMBEDDED` or its folder)."""
    if checkpoint is None:
        return False
    if str(checkpoint) == EMBEDDED:
        return True
    path = embedded_model_path(verify=False)
    try:
        return path is not None and Path(checkpoint).expanduser().resolve() == path.resolve()
    except (OSError, ValueError):
        return False
