"""Which model to load when none is named: one rule for every command and for ``from_pretrained()``.

Named → ``$ZOOMLDM_CHECKPOINT`` → the published BRCA checkpoint when it is cached or the hub answers →
the embedded offline model (:mod:`zoomldm.checkpoints.embedded`), with one line that says so.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from .embedded import CARD, EMBEDDED, NAME, embedded_model_path

#: the published checkpoint that commands load when no model is named (hub id; ``brca`` is the same)
PUBLISHED = "StonyBrook-CVLab/ZoomLDM/brca"
#: the environment variable that names the default checkpoint
CHECKPOINT_ENV = "ZOOMLDM_CHECKPOINT"
#: seconds the hub gets to answer the reachability check (no long retries on an offline machine)
HUB_TIMEOUT_S = 3.0

logger = logging.getLogger("zoomldm")


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
