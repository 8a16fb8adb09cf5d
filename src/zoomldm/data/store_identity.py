"""What identifies a prepared store, and the check of a reopened store against it.

The store's attributes (settings, encoder, VQ autoencoder with its :func:`vae_fingerprint`), the store
created or reopened by the setup (refused when made with other settings: :func:`setting_differences`,
the rule ``zoomldm features`` shares), its half-done commit cut back and a new run number started.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

import torch
import zarr

from ..errors import ZoomLDMError
from ..models.encoders import SSLEncoder
from .prepare_settings import PrepareSettings
from .store import STORE_FORMAT, STORE_VERSION, StoreWriter, create_store, open_store
from .tiling import TILE


# -- model identity -----------------------------------------------------------------------------------
def vae_fingerprint(vae: torch.nn.Module) -> str:
    """sha256 of the encoder-side weights (``encoder.*``, ``quant_conv.*``): what determines the latents."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        if name.startswith(("encoder.", "quant_conv.")):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _store_attrs(
    settings: PrepareSettings, encoder: SSLEncoder, vae: torch.nn.Module, vae_info: dict | None
) -> dict:
    return {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "zoomldm_version": _package_version(),
        "domain": settings.domain,
        "levels": [
            {"index": m.index, "name": m.name, "key": m.key, "grid_size": m.grid_size}
            for m in settings.resolved_levels()
        ],
        "tile_size": TILE,
        "resampling": f"{settings.resampling} (PIL, antialiased); pyramid level nearest finer than the target",
        "unit": "um/px" if settings.domain == "pathology" else "m/px",
        "encoder": encoder.describe(),
        "vae": {"weights_sha256": vae_fingerprint(vae), "latent_shape": [3, 64, 64], **(vae_info or {})},
        "identity": settings.identity(),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
    }


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("zoomldm")
    except PackageNotFoundError:
        return "unknown"


def _open_or_create(
    url: str, attrs: dict, levels, ssl_dim: int, save_jpeg: bool, is_main: bool
) -> zarr.Group:
    """Create the store, or reopen it after checking that it was made with the same settings."""
    try:
        root = open_store(url, mode="r+")
        existing = root.attrs.asdict()
    except (ZoomLDMError, FileNotFoundError):
        existing = None
    if existing is None or "format" not in existing:
        if not is_main:
            raise ZoomLDMError(f"{url}: the store does not exist; rank 0 creates it")
        root = open_store(url, mode="w" if existing is None else "a")
        create_store(root, levels, ssl_dim, attrs, save_jpeg)
    else:
        if existing.get("format") != STORE_FORMAT:
            raise ZoomLDMError(f"{url} is not a zoomldm dataset store")
        diffs = [
            f"{key}.{name}: {old!r} in the store, {new!r} now"
            for key in ("identity", "encoder", "vae")
            for name, old, new in setting_differences(
                _comparable(existing.get(key), key), _comparable(attrs[key], key)
            )
        ]
        if diffs:
            raise ZoomLDMError(
                f"{url} was prepared with other settings ({'; '.join(diffs)}); use the same options or a new store"
            )
    if is_main:
        StoreWriter(root, levels).repair()
        root.attrs["run"] = int(root.attrs.get("run", 0)) + 1
        attrs_now = {k: v for k, v in attrs.items() if k in ("settings", "zoomldm_version")}
        root.attrs.update(attrs_now)  # the latest run's non-identity settings (workers, batch size)
    return root


def setting_differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every leaf that differs between two JSON-like settings records (the
    message of ``prepare`` and ``features`` when an output was made with other settings)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for k in sorted(set(old) | set(new))
            for d in setting_differences(old.get(k), new.get(k), f"{prefix}{k}.")
        ]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _comparable(value: Any, key: str) -> Any:
    if key == "vae" and isinstance(value, dict):
        return {"weights_sha256": value.get("weights_sha256")}
    return json.loads(json.dumps(value))
