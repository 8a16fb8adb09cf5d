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
import logging
import os
import re
import threading
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import CheckpointError

if TYPE_CHECKING:
    from ..data.encoders import SSLEncoder
    from ..pipeline import ZoomLDMPipeline

NAME = "tiny_brca"
CARD = "MODEL_CARD.md"
#: the name that selects this model wherever a checkpoint is taken (``--checkpoint embedded``,
#: ``ZoomLDMPipeline.from_pretrained("embedded")``, ``$ZOOMLDM_CHECKPOINT=embedded``)
EMBEDDED = "embedded"
#: the published checkpoint that commands load when no model is named (hub id; ``brca`` is the same)
PUBLISHED = "StonyBrook-CVLab/ZoomLDM/brca"
#: the environment variable that names the default checkpoint
CHECKPOINT_ENV = "ZOOMLDM_CHECKPOINT"
#: seconds the hub gets to answer the reachability check (no long retries on an offline machine)
HUB_TIMEOUT_S = 3.0

logger = logging.getLogger("zoomldm")
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
    from ..pipeline import ZoomLDMPipeline

    path = embedded_model_path()
    if path is None:
        return None
    pipe = ZoomLDMPipeline.from_pretrained(path, device=device, dtype="float32")
    return pipe, embedded_encoder(device)


# -- the default model: one rule for every command and for ZoomLDMPipeline.from_pretrained() ------------------
def published_available(timeout: float = HUB_TIMEOUT_S) -> bool:
    """True when the published checkpoint can be had now: in the local hub cache, or the hub answers.

    The check is quick on an offline machine: the cache is a file lookup, ``HF_HUB_OFFLINE=1`` means no hub,
    and the hub gets ``timeout`` seconds (name lookup and TCP connect, in a daemon thread, so a resolver
    that hangs cannot hold the command) instead of the download's retries (≈ 35 s measured offline).
    """
    from huggingface_hub import constants, try_to_load_from_cache

    parts = PUBLISHED.split("/")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        if isinstance(try_to_load_from_cache(repo, f"{sub}/weights.ckpt"), str):
            return True
    except Exception:  # a damaged or unreadable cache: not available from it
        pass
    if constants.HF_HUB_OFFLINE:
        return False
    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    answered: list[bool] = []

    def connect() -> None:
        import socket

        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answered.append(True)
        except OSError:
            pass

    worker = threading.Thread(target=connect, daemon=True, name="zoomldm-hub-check")
    worker.start()
    worker.join(timeout)
    return bool(answered)


def _note(message: str) -> None:
    logger.warning(message)


def default_checkpoint(
    checkpoint: str | Path | None = None,
    *,
    log: Callable[[str], None] | None = _note,
    published: str = PUBLISHED,
    fallback: bool = True,
) -> str | Path:
    """The model to load, by the one rule of the package (commands and :meth:`ZoomLDMPipeline.from_pretrained`).

    1. a checkpoint the caller names is used as it is (one that fails to load is an error, never replaced);
    2. else ``$ZOOMLDM_CHECKPOINT`` (named too);
    3. else the published BRCA checkpoint when it is cached or the hub answers (:func:`published_available`);
    4. else the embedded offline model (:data:`EMBEDDED`), and ``log`` says so in one line (by default a
       ``zoomldm`` logger warning: one line on stderr). Where no embedded model is shipped, the published id
       (whose download error then says what to do).

    ``published``: the published checkpoint of step 3 (``naip`` for satellite commands); ``fallback=False``
    stops after step 3 without the availability check (``prepare`` and ``features``: a store or features
    belong to one model, so the network state must not pick it; see docs/embedded_model.md).
    """
    if checkpoint is not None and str(checkpoint) != "":
        return checkpoint
    named = os.environ.get(CHECKPOINT_ENV)
    if named:
        return named
    if not fallback or published != PUBLISHED:
        return published
    if published_available() or embedded_model_path(verify=False) is None:
        return PUBLISHED
    if log is not None:
        log(
            f"note: the published checkpoint ({PUBLISHED}) is not cached and the hub cannot be reached; using "
            f"the embedded offline model (tiny, trained on one H&E image: zoomldm/assets/{NAME}/{CARD})"
        )
    return EMBEDDED


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


def embedded_encoder(device: str = "cpu", dtype: Any = None) -> SSLEncoder:
    """The embedded model's own SSL encoder (its store was prepared with it; grids of other encoders do not
    fit its 64-d Summarizer input); ``dtype``: autocast dtype, as :func:`~zoomldm.data.encoders.build_encoder`."""
    from ..data.encoders import build_encoder

    path = embedded_model_path()
    if path is None:
        raise CheckpointError(
            f"no embedded model in this installation (zoomldm/assets/{NAME}); reinstall zoomldm"
        )
    spec = encoder_spec(path)
    return build_encoder(
        spec["name"],
        weights=str(path / "encoder.safetensors"),
        device=device,
        dtype=dtype,
        **spec.get("options", {}),
    )
