"""A CDM given to the pipeline as a model or a path, loaded once for reference-free sampling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError


def load_cdm_model(cdm: Any, device: Any) -> Any:
    """A CDM given as a model or a path (our folder, a train-cdm checkpoint or the authors' DiT file)."""
    if isinstance(cdm, str | Path):
        from ..models.cdm import load_cdm

        if not Path(cdm).exists():
            raise InputError(f"{cdm}: CDM checkpoint not found (train one with zoomldm train-cdm)")
        return load_cdm(cdm)[0].to(device).eval()  # its errors name the file (models.cdm)
    return cdm
