"""The package's embedded offline model: a small trained ZoomLDM under ``zoomldm/assets/tiny_brca/``.

``tools/train_embedded_model.py`` trains it with the project's own commands (``train-vae``, ``prepare``,
``train``) on the MIT-licensed H&E image ``brca_001.jpeg`` and writes the folder: our pipeline format
(``zoomldm.json``, ``unet/``, ``vae/``, ``summarizer/``), its SSL encoder (``encoder.safetensors`` +
``encoder.json``: a seeded random 64-d ViT, so that inputs are embedded exactly as its training store was)
and ``MODEL_CARD.md``, whose *Files* table lists the sha256 of every other file. Nothing here downloads.

:func:`embedded_model_path` returns the folder (or None when the package ships none);
:func:`verify_embedded_model` checks every file against the card, so damaged or edited weights are a
one-line :class:`~zoomldm.errors.CheckpointError`, never silently different samples.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError

if TYPE_CHECKING:
    from ..data.encoders import SSLEncoder
    from ..pipeline import ZoomLDMPipeline

NAME = "tiny_brca"
CARD = "MODEL_CARD.md"
_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*([0-9a-f]{64})\s*\|")


def _asset_dir() -> Path:
    return Path(str(resources.files("zoomldm.assets").joinpath(NAME)))


def card_hashes(card: str | Path) -> dict[str, str]:
    """The *Files* table of a model card: relative path → sha256 (rows ``| `path` | <sha256> | … |``)."""
    text = Path(card).read_text(encoding="utf-8")
    return {m.group(1): m.group(2) for line in text.splitlines() if (m := _ROW.match(line.strip()))}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        if _sha256(file) != digest:
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


def load_embedded(device: str = "cpu") -> tuple[ZoomLDMPipeline, SSLEncoder] | None:
    """The embedded pipeline (float32) and its SSL encoder, or None when none is shipped."""
    from ..data.encoders import build_encoder
    from ..pipeline import ZoomLDMPipeline

    path = embedded_model_path()
    if path is None:
        return None
    pipe = ZoomLDMPipeline.from_pretrained(path, device=device, dtype="float32")
    spec = encoder_spec(path)
    encoder = build_encoder(
        spec["name"], weights=str(path / "encoder.safetensors"), device=device, **spec.get("options", {})
    )
    return pipe, encoder
