"""The authors' CompVis-LDM checkpoints: reading, splitting and converting their keys to diffusers'.

Official layout (SPEC §2.6, ../shared/compat/README.md): a flat dict or Lightning ``{"state_dict": …}``
with ``model.diffusion_model.*`` (live UNet), ``model_ema.*`` (LitEma copies of the UNet: dots removed,
plus ``decay`` and ``num_updates``), ``cond_stage_model.*`` (Summarizer, no EMA), ``first_stage_model.*``
(VQ-f4) and 12 schedule buffers. Key conversion uses diffusers' own ``convert_ldm_unet_checkpoint`` and
``convert_ldm_vae_checkpoint``; the VQ codebook is copied by hand (diffusers does not map it).

Every key must be consumed: an unknown key, a missing key or a mis-shaped tensor is a
:class:`CheckpointError` that names the key. Which converted tensor came from which official key is
tracked by storage pointer (the converters rename and slice, they do not copy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import ZoomLDMConfig
from ..errors import CheckpointError
from ..schedule import official_alphas_cumprod, official_betas
from ..tensorfiles import load_safetensors, load_torch

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
SUMMARIZER_PREFIX = "cond_stage_model."
VAE_PREFIX = "first_stage_model."
EMA_META = ("model_ema.decay", "model_ema.num_updates")
SCHEDULE_KEYS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
OFFICIAL_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".safetensors"}
HUB_REPO = "StonyBrook-CVLab/ZoomLDM"


@dataclass
class OfficialWeights:
    """An official checkpoint converted to the diffusers/our key layout."""

    unet: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor]
    summarizer: dict[str, torch.Tensor]
    ema: bool
    ema_num_updates: int | None = None
    origin: dict[str, str] = field(default_factory=dict)  # "unet.<diffusers key>" -> official key


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official checkpoint: ``.ckpt/.pt`` (``torch.load(weights_only=True)``) or ``.safetensors``.

    A missing, empty, truncated or foreign file, and a pickle that carries code, is a
    :class:`CheckpointError` of one line that names the file (:mod:`zoomldm.tensorfiles`).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        sd: object = load_safetensors(path, "safetensors checkpoint")
    else:
        sd = load_torch(path, "PyTorch checkpoint")
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]  # Lightning layout
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (flat or under 'state_dict')")
    if not sd:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    return dict(sd)


def ema_key(live_key: str) -> str:
    """LitEma's name for a ``model.…`` parameter: ``model_ema.`` + the name without dots."""
    return EMA_PREFIX + live_key[len("model.") :].replace(".", "")


def _split(sd: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {
        "unet": {},
        "ema": {},
        "summarizer": {},
        "vae": {},
        "schedule": {},
    }
    unknown = []
    for key, value in sd.items():
        if key.startswith(UNET_PREFIX):
            groups["unet"][key] = value
        elif key.startswith(EMA_PREFIX):
            groups["ema"][key] = value
        elif key.startswith(SUMMARIZER_PREFIX):
            groups["summarizer"][key[len(SUMMARIZER_PREFIX) :]] = value
        elif key.startswith(VAE_PREFIX):
            groups["vae"][key] = value
        elif key in SCHEDULE_KEYS:
            groups["schedule"][key] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"unexpected key {unknown[0]!r}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + ": not part of a ZoomLDM checkpoint (expected model.diffusion_model.*, model_ema.*, "
            "cond_stage_model.*, first_stage_model.* and the schedule buffers)"
        )
    for name, prefix in (("unet", UNET_PREFIX), ("summarizer", SUMMARIZER_PREFIX), ("vae", VAE_PREFIX)):
        if not groups[name]:
            raise CheckpointError(f"no {prefix}* keys: this is not a ZoomLDM checkpoint (missing the {name})")
    return groups


def _check_schedule(groups: dict, config: ZoomLDMConfig) -> None:
    sched = groups["schedule"]
    missing = [k for k in SCHEDULE_KEYS if k not in sched]
    if missing:
        raise CheckpointError(f"missing key {missing[0]!r} (schedule buffer)")
    checks = {
        "betas": official_betas(config.schedule).float(),
        "alphas_cumprod": official_alphas_cumprod(config.schedule),
    }
    for key, expected in checks.items():
        got = sched[key]
        if got.shape != expected.shape or (got.float() - expected).abs().max() > 1e-6:
            raise CheckpointError(
                f"schedule buffer {key!r} does not match the config's schedule {config.schedule}; "
                "pass the config (yaml) this checkpoint was trained with"
            )


def _select_unet(groups: dict, ema: bool) -> tuple[dict[str, torch.Tensor], int | None]:
    live, ema_sd = groups["unet"], groups["ema"]
    num_updates = None
    if ema_sd:
        expected = {ema_key(k): k for k in live}
        extra = sorted(set(ema_sd) - set(expected) - set(EMA_META))
        if extra:
            raise CheckpointError(
                f"unexpected EMA key {extra[0]!r}: it has no matching {UNET_PREFIX}* weight"
            )
        missing = sorted(set(expected) - set(ema_sd)) + [k for k in EMA_META if k not in ema_sd]
        if missing:
            raise CheckpointError(f"missing key {missing[0]!r} (EMA copy of the UNet)")
        num_updates = int(ema_sd["model_ema.num_updates"])
    if not ema:
        return dict(live), num_updates
    if not ema_sd:
        raise CheckpointError(
            "the checkpoint has no EMA weights (model_ema.*); load the live weights with ema=False / --live"
        )
    return {k: ema_sd[ema_key(k)] for k in live}, num_updates


def _ptr(t: torch.Tensor) -> tuple[int, int]:
    return (t.untyped_storage().data_ptr(), t.storage_offset())


def track_sources(
    source: Mapping[str, torch.Tensor], converted: Mapping[str, torch.Tensor | None], what: str
) -> dict[str, str]:
    """Map converted keys to source keys; raise on source tensors the converter did not use."""
    by_ptr = {}
    for key, t in source.items():
        by_ptr.setdefault(_ptr(t), key)
    origin = {}
    for key, t in converted.items():
        if t is None:
            continue
        src = by_ptr.get(_ptr(t))
        if src is not None:
            origin[key] = src
    unused = sorted(set(source) - set(origin.values()))
    if unused:
        raise CheckpointError(f"unexpected key {unused[0]!r}: no {what} weight corresponds to it")
    return origin


def convert_unet(
    source: Mapping[str, torch.Tensor], config: ZoomLDMConfig, from_ema: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``model.diffusion_model.*`` weights → diffusers keys with diffusers' converter; every source key
    must be consumed. Returns the state and ``"unet.<key>" -> official key`` (the EMA name if ``from_ema``)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = convert_ldm_unet_checkpoint(dict(source), config.unet, extract_ema=False)
    origin = {
        f"unet.{k}": (ema_key(v) if from_ema else v) for k, v in track_sources(source, unet, "UNet").items()
    }
    return dict(unet), origin


def convert_vae(
    source: Mapping[str, torch.Tensor], config: ZoomLDMConfig
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``first_stage_model.*`` weights → diffusers ``VQModel`` keys; the codebook, which diffusers'
    converter does not map, is copied by hand. Returns the state and ``"vae.<key>" -> official key``."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae_src = dict(source)
    codebook_key = VAE_PREFIX + "quantize.embedding.weight"
    if codebook_key not in vae_src:
        raise CheckpointError(f"missing key {codebook_key!r} (VQ codebook)")
    codebook = vae_src.pop(codebook_key)
    vae = convert_ldm_vae_checkpoint(vae_src, config.vae)
    vae["quantize.embedding.weight"] = codebook
    origin = track_sources(vae_src, vae, "VQ autoencoder")
    origin["quantize.embedding.weight"] = codebook_key
    return dict(vae), {f"vae.{k}": v for k, v in origin.items()}


def convert_official(
    sd: Mapping[str, torch.Tensor], config: ZoomLDMConfig, ema: bool = True
) -> OfficialWeights:
    """Split, validate and convert an official state dict (keys only; no model is built)."""
    groups = _split(sd)
    _check_schedule(groups, config)
    unet_src, num_updates = _select_unet(groups, ema)
    unet, origin = convert_unet(unet_src, config, from_ema=ema)
    vae, vae_origin = convert_vae(groups["vae"], config)
    origin.update(vae_origin)
    origin.update({f"summarizer.{k}": SUMMARIZER_PREFIX + k for k in groups["summarizer"]})
    return OfficialWeights(unet, vae, dict(groups["summarizer"]), ema, num_updates, origin)


def load_into(
    module: torch.nn.Module,
    state: Mapping[str, torch.Tensor | None],
    component: str,
    origin: Mapping[str, str] | None = None,
    hint: str = "",
) -> None:
    """Strictly load ``state`` into ``module``; a missing, unexpected or mis-shaped key is named."""
    origin = origin or {}
    expected = module.state_dict()

    def name(key: str) -> str:
        src = origin.get(f"{component}.{key}") or (
            SUMMARIZER_PREFIX + key if component == "summarizer" else None
        )
        return f"{src!r} ({component} parameter {key!r})" if src else f"{component} parameter {key!r}"

    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise CheckpointError(
            f"unexpected key {name(unexpected[0])}: the architecture has no such weight{hint}"
        )
    missing = [k for k in expected if state.get(k) is None]
    if missing:
        raise CheckpointError(f"missing key: the checkpoint has no weight for {name(missing[0])}{hint}")
    for key, t in state.items():
        if tuple(t.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"key {name(key)} has shape {list(t.shape)}, the architecture expects {list(expected[key].shape)}{hint}"
            )
    if any(p.is_meta for p in expected.values()):
        return  # shape validation only
    module.load_state_dict(dict(state), strict=True)


def guess_preset(sd: Mapping[str, torch.Tensor]) -> str | None:
    """The published preset whose shapes this official checkpoint has (brca: 8 levels, naip: 4)."""
    mag = sd.get(SUMMARIZER_PREFIX + "mag_embedding.weight")
    first = sd.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if mag is None or first is None or tuple(first.shape) != (192, 3, 3, 3) or mag.shape[1] != 512:
        return None
    return {8: "brca", 4: "naip"}.get(int(mag.shape[0]))
