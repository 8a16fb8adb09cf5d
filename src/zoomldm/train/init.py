"""Where the first weights come from: scratch, an official ZoomLDM checkpoint, our format, or CompVis LDM.

* ``scratch``: random networks of ``model.config`` (seeded).
* ``official`` (fine-tuning): the authors' ``.ckpt`` — the **live** UNet continues training
  (``ZoomLDMModel.from_official(..., ema=False)``) and its ``model_ema.*`` copy seeds our EMA, with
  the official update counter (so the EMA decay continues where it was).
* ``pretrained``: our format. A checkpoint written by this trainer carries its live weights in
  ``training_state/`` (taken when present); otherwise the stored UNet is both live and EMA.
* ``compvis``: the ImageNet LDM ``cin256-v2`` ``model.ckpt`` the authors initialised from (SPEC §2.2,
  their issue #7): the UNet from ``model.diffusion_model.*`` (or ``model_ema.*``), the class embedder
  (``cond_stage_model.*`` and any ``model.diffusion_model.label_emb.*``) dropped, the VQ-f4 from
  ``first_stage_model.*`` when present; the Summarizer starts random. Every key of the file is accounted
  for (used, or dropped with a reason), and the UNet must load with 0 missing and 0 unexpected keys —
  the authors' own loader (``strict=False`` under another prefix) could silently match nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ZoomLDMConfig
from ..errors import CheckpointError
from .config import ModelSection

LABEL_EMB = "model.diffusion_model.label_emb."


@dataclass
class InitialWeights:
    """The networks to start from (CPU, float32) and the EMA to start with."""

    unet: torch.nn.Module
    summarizer: torch.nn.Module
    vae: torch.nn.Module
    config: ZoomLDMConfig
    #: EMA initial weights (UNet parameter name → tensor); None = start the EMA at the live weights
    ema_unet: dict[str, torch.Tensor] | None = None
    ema_num_updates: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)


def load_initial_weights(model: ModelSection, seed: int = 0) -> InitialWeights:
    """The networks described by the ``model:`` section (see the module docstring)."""
    loaders = {"scratch": _scratch, "official": _official, "pretrained": _pretrained, "compvis": _compvis}
    weights = loaders[model.init](model, seed)
    if model.vae is not None:
        weights.vae = _vae_from(model.vae, model.config)
        weights.provenance["vae"] = model.vae
    return weights


def _scratch(model: ModelSection, seed: int) -> InitialWeights:
    from ..models.bundle import ZoomLDMModel

    pipe = ZoomLDMModel.from_config(model.config, seed=seed)
    return InitialWeights(
        pipe.unet, pipe.summarizer, pipe.vae, pipe.config, provenance={"init": "scratch", "seed": seed}
    )


def _official(model: ModelSection, seed: int) -> InitialWeights:
    from ..checkpoints import EMA_PREFIX, convert_official, read_state_dict
    from ..models.bundle import ZoomLDMModel

    pipe = ZoomLDMModel.from_official(model.checkpoint, config=model.config, ema=False)
    sd = read_state_dict(model.checkpoint)
    ema_unet, num_updates = None, 0
    if any(k.startswith(EMA_PREFIX) for k in sd):
        ema = convert_official(sd, pipe.config, ema=True)
        ema_unet, num_updates = dict(ema.unet), int(ema.ema_num_updates or 0)
    prov = {"init": "official", "checkpoint": str(model.checkpoint), "ema_num_updates": num_updates}
    return InitialWeights(pipe.unet, pipe.summarizer, pipe.vae, pipe.config, ema_unet, num_updates, prov)


def _pretrained(model: ModelSection, seed: int) -> InitialWeights:
    from ..checkpoints import resolve_checkpoint
    from ..models.bundle import ZoomLDMModel

    src = resolve_checkpoint(model.checkpoint, model.config)
    if src.kind == "official":
        return _official(ModelSection(**{**model.__dict__, "checkpoint": str(src.path)}), seed)
    pipe = ZoomLDMModel.from_pretrained(src.path)
    ema_unet = {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}
    num_updates = 0
    state = src.path / "training_state"
    live = state / "model.safetensors"
    if live.is_file():  # a checkpoint of this trainer: live weights + EMA counter
        from safetensors.torch import load_file

        weights = load_file(str(live))
        for prefix, module in (("unet.", pipe.unet), ("summarizer.", pipe.summarizer)):
            part = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
            module.load_state_dict(part, strict=True)
        progress = state / "progress.json"
        if progress.is_file():
            num_updates = int(json.loads(progress.read_text()).get("ema_num_updates", 0))
    prov = {"init": "pretrained", "checkpoint": str(src.path), "ema_num_updates": num_updates}
    return InitialWeights(pipe.unet, pipe.summarizer, pipe.vae, pipe.config, ema_unet, num_updates, prov)


def _compvis(model: ModelSection, seed: int) -> InitialWeights:
    from ..checkpoints import load_into, read_state_dict
    from ..models import Summarizer, build_unet, build_vae

    config = ZoomLDMConfig.resolve(model.config)
    sd = read_state_dict(model.checkpoint)
    converted = convert_compvis(sd, config, ema=model.ema)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        summarizer = Summarizer(**config.summarizer)
    with torch.device("meta"):
        unet = build_unet(config.unet)
    load_into(unet, converted.unet, "unet", converted.origin)  # 0 missing / 0 unexpected / shapes
    unet.load_state_dict(converted.unet, strict=True, assign=True)
    if converted.vae is not None:
        with torch.device("meta"):
            vae = build_vae(config.vae)
        load_into(vae, converted.vae, "vae", converted.origin)
        vae.load_state_dict(converted.vae, strict=True, assign=True)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = build_vae(config.vae)
    prov = {
        "init": "compvis",
        "checkpoint": str(model.checkpoint),
        "unet_weights": "ema" if model.ema else "live",
        "dropped": {reason: len(keys) for reason, keys in converted.dropped.items()},
    }
    return InitialWeights(unet, summarizer, vae, config, None, 0, prov)


# -- CompVis LDM (cin256-v2) -----------------------------------------------------------------------------
@dataclass
class CompVisWeights:
    """A CompVis LDM checkpoint converted for our UNet (and VQ), with the fate of every key."""

    unet: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor] | None
    origin: dict[str, str]  # "unet.<diffusers key>" / "vae.<key>" -> checkpoint key
    dropped: dict[str, list[str]]  # reason -> checkpoint keys not used


def convert_compvis(
    sd: Mapping[str, torch.Tensor], config: ZoomLDMConfig, ema: bool = False
) -> CompVisWeights:
    """Split a CompVis LDM state dict: UNet (+ VQ) converted with diffusers' converters, class embedder and
    unused copies dropped with a reason; any other key, and any UNet key the converter did not consume, is
    a :class:`CheckpointError` naming it."""
    from ..checkpoints import (
        EMA_META,
        EMA_PREFIX,
        SCHEDULE_KEYS,
        SUMMARIZER_PREFIX,
        UNET_PREFIX,
        VAE_PREFIX,
        convert_unet,
        convert_vae,
        ema_key,
    )
    from ..schedule import official_alphas_cumprod

    live = {k: v for k, v in sd.items() if k.startswith(UNET_PREFIX) and not k.startswith(LABEL_EMB)}
    if not live:
        raise CheckpointError(f"no {UNET_PREFIX}* keys: not a CompVis latent-diffusion checkpoint")
    dropped: dict[str, list[str]] = {}

    def drop(reason: str, key: str) -> None:
        dropped.setdefault(reason, []).append(key)

    label_ema = {ema_key(k) for k in sd if k.startswith(LABEL_EMB)}
    ema_names = {ema_key(k): k for k in live}
    vae_src: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if key.startswith(LABEL_EMB):
            drop("class embedder (UNet label_emb)", key)
        elif key.startswith(SUMMARIZER_PREFIX):
            drop("class embedder (cond_stage_model)", key)
        elif key in label_ema:
            drop("class embedder (EMA copy of label_emb)", key)
        elif key.startswith(EMA_PREFIX):
            if key in ema_names or key in EMA_META:
                if not ema:
                    drop("EMA copy (model.ema is false: live UNet used)", key)
            else:
                unknown.append(key)
        elif key.startswith(VAE_PREFIX):
            vae_src[key] = value
        elif key in SCHEDULE_KEYS:
            drop("schedule buffers (recomputed from the config)", key)
        elif key.startswith(UNET_PREFIX):
            continue
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"unexpected key {unknown[0]!r}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + ": not part of a CompVis latent-diffusion checkpoint"
        )
    if "alphas_cumprod" in sd:
        expected = official_alphas_cumprod(config.schedule)
        got = sd["alphas_cumprod"].float()
        if got.shape != expected.shape or (got - expected).abs().max() > 1e-6:
            raise CheckpointError(
                f"the checkpoint's noise schedule differs from the config's {config.schedule}; ZoomLDM keeps "
                "the LDM schedule (linear 0.0015 → 0.0195, 1000 steps)"
            )
    if ema:
        missing = [k for k in ema_names if k not in sd]
        if missing:
            raise CheckpointError(f"model.ema is true but the checkpoint has no EMA key {missing[0]!r}")
        source = {ema_names[k]: sd[k] for k in ema_names}
    else:
        source = live
    unet, origin = convert_unet(source, config, from_ema=ema)
    vae = None
    if vae_src:
        vae, vae_origin = convert_vae(vae_src, config)
        origin.update(vae_origin)
    return CompVisWeights(unet, vae, origin, dropped)


def _vae_from(spec: str, config: str | None) -> torch.nn.Module:
    """The VQ-f4 of a checkpoint (our format, an official file with its yaml, or a hub id)."""
    from ..models.bundle import ZoomLDMModel

    return ZoomLDMModel.from_pretrained(spec, config=config).vae


def describe_keys(weights: CompVisWeights) -> str:
    """One line per fate of the checkpoint's keys (for logs)."""
    used_unet = sum(1 for k in weights.origin if k.startswith("unet."))
    used_vae = sum(1 for k in weights.origin if k.startswith("vae."))
    lines = [
        f"UNet: {used_unet} tensors loaded (0 missing, 0 unexpected)",
        f"VQ-f4: {used_vae} tensors loaded",
    ]
    lines += [f"dropped {len(keys)}: {reason}" for reason, keys in weights.dropped.items()]
    return "\n".join(lines)
