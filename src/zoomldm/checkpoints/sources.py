"""Where a checkpoint comes from: a local folder in our format, an official file, a hub id, or the name
``embedded``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, ZoomLDMError
from ..fsutil import file_sha256  # noqa: F401 (re-exported: the hash that provenance records)
from .embedded import EMBEDDED_MODELS, embedded_model_path
from .official import HUB_REPO, OFFICIAL_SUFFIXES


@dataclass
class CheckpointSource:
    kind: str  # "ours" | "official"
    path: Path
    config: Path | None = None


def resolve_checkpoint(spec: str | Path, config: str | None = None) -> CheckpointSource:
    """A local directory in our format, an official file, or a hub id (``org/name[/subfolder]``).

    Short names ``brca`` / ``naip`` mean the authors' published weights on the hub
    (``StonyBrook-CVLab/ZoomLDM``, files ``<name>/weights.ckpt`` and ``<name>/config.yaml``); ``embedded``
    the package's own offline model (:mod:`zoomldm.checkpoints.embedded`). A local path of that name wins.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "zoomldm.json").is_file():
            return CheckpointSource("ours", path)
        for name in ("weights.ckpt", "weights.safetensors", "model.ckpt"):
            if (path / name).is_file():
                cfg = path / "config.yaml"
                return CheckpointSource("official", path / name, cfg if cfg.is_file() else None)
        raise ZoomLDMError(f"{path} holds neither our format (zoomldm.json) nor an official weights.ckpt")
    if path.is_file():
        if path.name == "zoomldm.json":
            return CheckpointSource("ours", path.parent)
        if path.suffix not in OFFICIAL_SUFFIXES:
            raise ZoomLDMError(
                f"{path.name}: unsupported checkpoint type; expected .ckpt, .pt or .safetensors"
            )
        sibling = path.parent / "config.yaml"
        return CheckpointSource("official", path, sibling if sibling.is_file() and config is None else None)
    if text in EMBEDDED_MODELS:  # a package's embedded offline model (checkpoints.embedded), sha256-checked
        local = embedded_model_path(name=text)
        if local is None:
            raise CheckpointError(
                f"{text}: this installation ships no such embedded model (reinstall zoomldm)"
            )
        return CheckpointSource("ours", local)
    if text in {"brca", "naip"}:
        text = f"{HUB_REPO}/{text}"
    parts = text.split("/")
    if len(parts) < 2 or text.startswith((".", "/", "~")) or path.suffix in OFFICIAL_SUFFIXES:
        raise ZoomLDMError(
            f"checkpoint not found: {text} (a local file/directory or a hub id org/name[/subfolder])"
        )
    return _download_from_hub("/".join(parts[:2]), "/".join(parts[2:]) or None)


def _download_from_hub(repo_id: str, subfolder: str | None) -> CheckpointSource:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.utils import logging as hf_logging

    prefix = f"{subfolder}/" if subfolder else ""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # offline, its retry warnings would bury our one-line message
    try:
        try:
            weights = hf_hub_download(repo_id, f"{prefix}weights.ckpt")
            try:
                cfg = Path(hf_hub_download(repo_id, f"{prefix}config.yaml"))
            except EntryNotFoundError:
                cfg = None
            return CheckpointSource("official", Path(weights), cfg)
        except EntryNotFoundError:
            local = Path(snapshot_download(repo_id, allow_patterns=[f"{prefix}*"]))
            return CheckpointSource("ours", local / prefix if prefix else local)
    except Exception as err:  # offline, unknown repo, auth: say what to do, in one line
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        reason = "HF_HUB_OFFLINE=1 and it is not in the local cache" if offline else type(err).__name__
        raise ZoomLDMError(
            f"could not get {repo_id}{'/' + subfolder if subfolder else ''} from the Hugging Face hub ({reason}); "
            "download the checkpoint on a machine with internet and pass its local path, or use the package's "
            "embedded offline model: --checkpoint embedded"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
