"""The model, from its configuration: :class:`ModelSpec` (config, parameter counts, source) and
:func:`model_spec`, which reads a pipeline, a config, a preset name or a checkpoint without loading its
weights (parameters are counted on PyTorch's ``meta`` device); :class:`_ConfigPipe`, the attributes of a
pipeline that the geometry functions read.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import PRESETS, ZoomLDMConfig
from ...errors import ConfigError, ZoomLDMError


@dataclass(frozen=True)
class ModelSpec:
    """What the plan needs to know about a model, without its weights."""

    config: ZoomLDMConfig
    parameters: dict[str, int]  # unet, vae, summarizer
    source: str
    checkpoint_file_bytes: int = 0  # an official file is read whole while loading (0: our format / preset)

    @property
    def scales(self):
        return self.config.scales


class _ConfigPipe:
    """The attributes of a pipeline the geometry functions read (``config``, ``scales``, UNet channels)."""

    def __init__(self, config: ZoomLDMConfig) -> None:
        self.config = config
        self.unet = type("U", (), {"config": type("C", (), {"in_channels": config.unet["in_channels"]})()})()

    @property
    def scales(self):
        return self.config.scales


def model_spec(model: Any = None, config: str | Path | None = None) -> ModelSpec:
    """The configuration and parameter counts of ``model`` without loading its weights.

    ``model`` is a :class:`~zoomldm.pipeline.ZoomLDMPipeline` (its config and real counts), a
    :class:`~zoomldm.config.ZoomLDMConfig`, a preset name (``brca``, ``naip``, ``tiny``) or a checkpoint as
    ``--checkpoint`` takes it (our folder: its ``zoomldm.json``; an official file: ``config`` or the yaml
    beside it, else its tensors are read to recognise the architecture).
    """
    if hasattr(model, "unet") and hasattr(model, "config") and isinstance(model.config, ZoomLDMConfig):
        counts = {
            name: sum(p.numel() for p in getattr(model, name).parameters())
            for name in ("unet", "vae", "summarizer")
        }
        return ModelSpec(model.config, counts, str(model.provenance.get("checkpoint", "pipeline")))
    file_bytes = 0
    if isinstance(model, ZoomLDMConfig):
        cfg, source = model, model.preset or "config"
    elif model is None:
        raise ConfigError("plan_large needs a model: a pipeline, a config, a preset name or a checkpoint")
    else:
        cfg, source, file_bytes = _checkpoint_config(model, config)
    return ModelSpec(cfg, _parameter_counts(cfg), source, file_bytes)


def _checkpoint_config(checkpoint: Any, config: str | Path | None) -> tuple[ZoomLDMConfig, str, int]:
    from ...checkpoints import guess_preset, read_state_dict, resolve_checkpoint
    from ...errors import CheckpointError
    from ...tensorfiles import read_json_object

    text = str(checkpoint)
    preset = text.rstrip("/").rsplit("/", 1)[-1]
    if (
        not Path(text).expanduser().exists()
        and preset in PRESETS
        and (text == preset or text.count("/") >= 2)
    ):
        # a preset name or the hub id of published weights (…/brca, …/naip): the architecture is known, so
        # the plan needs no download (the run itself fetches the weights)
        return ZoomLDMConfig.resolve(config or preset), text, 0
    src = resolve_checkpoint(checkpoint, None if config is None else str(config))
    if src.kind == "ours":
        meta = read_json_object(src.path / "zoomldm.json", "model description")
        if not isinstance(meta.get("config"), dict):
            raise CheckpointError(f"{src.path / 'zoomldm.json'} is not a zoomldm model description")
        return ZoomLDMConfig.from_dict(meta["config"]), str(src.path), 0
    chosen = config or src.config
    if chosen is None:
        chosen = guess_preset(read_state_dict(src.path))  # the one case that reads the tensors
        if chosen is None:
            raise ZoomLDMError(
                f"{src.path.name}: pass --config (brca, naip or the yaml it was trained with); "
                "the architecture is not one of the published ones"
            )
    return ZoomLDMConfig.resolve(chosen), str(src.path), src.path.stat().st_size


@functools.lru_cache(maxsize=16)
def _counts_cached(key: str) -> tuple[int, int, int]:
    import torch

    from ...models.autoencoder import build_vae
    from ...models.summarizer import Summarizer
    from ...models.unet import build_unet

    cfg = ZoomLDMConfig.from_dict(json.loads(key))
    with torch.device("meta"):
        modules = (build_unet(cfg.unet), build_vae(cfg.vae), Summarizer(**cfg.summarizer))
    return tuple(sum(p.numel() for p in m.parameters()) for m in modules)  # type: ignore[return-value]


def _config_key(cfg: ZoomLDMConfig) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True, default=str)


def _parameter_counts(cfg: ZoomLDMConfig) -> dict[str, int]:
    unet, vae, summarizer = _counts_cached(_config_key(cfg))
    return {"unet": unet, "vae": vae, "summarizer": summarizer}
