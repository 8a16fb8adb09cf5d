"""``ZoomLDMPipeline``: conditions → Summarizer tokens → guided denoising → VQ decode.

The pipeline owns the three networks (``.unet`` a diffusers ``UNet2DConditionModel``, ``.vae`` a
diffusers ``VQModel``, ``.summarizer`` our :class:`~zoomldm.models.Summarizer`) and the config. Loading:

* :meth:`from_official` — the authors' CompVis checkpoint (+ yaml or preset), EMA UNet by default;
* :meth:`from_pretrained` — our format (``save_pretrained``), an official file, or a hub id;
* :meth:`from_config` — random initialisation (tests, the offline demo, training from scratch).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .conditioning import prepare_grid
from .config import ZoomLDMConfig
from .errors import ZoomLDMError
from .fsutil import replace_dir
from .models import Summarizer, build_unet, build_vae, use_official_quantizer
from .models.inference import optimize_for_inference, unfused
from .sampling.denoise import denoise as _denoise
from .scales import Magnification, Scales
from .schedule import make_scheduler

FORMAT_VERSION = 1
MAX_GUIDANCE = 50.0
MAX_STEPS = 1000


@dataclass
class PatchSamplingOutput:
    """Result of patch sampling: ``images`` uint8 ``[N, H, W, 3]`` and the final ``latents`` [N,3,h,w]."""

    images: np.ndarray
    latents: torch.Tensor | None
    settings: dict[str, Any] = field(default_factory=dict)


def _dtype(value: str | torch.dtype) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    try:
        return table[str(value).lower()]
    except KeyError:
        raise ZoomLDMError(f"unknown dtype {value!r}; expected one of {', '.join(table)}") from None


class ZoomLDMPipeline:
    """ZoomLDM patch generation at any magnification (and the model container for everything else)."""

    def __init__(
        self, unet, vae, summarizer: Summarizer, config: ZoomLDMConfig, provenance: dict | None = None
    ):
        self.unet = unet.eval()
        self.vae = vae.eval()
        self.summarizer = summarizer.eval()
        self.config = config
        self.provenance = dict(provenance or {})
        #: what :meth:`optimize` applied (reported with sampling settings, never saved with the weights)
        self.inference_settings: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: str | Path | ZoomLDMConfig = "tiny", seed: int = 0) -> ZoomLDMPipeline:
        """Randomly initialised networks of the given architecture (deterministic by ``seed``)."""
        cfg = ZoomLDMConfig.resolve(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = build_unet(cfg.unet)
            vae = build_vae(cfg.vae)
            summarizer = Summarizer(**cfg.summarizer)
        return cls(unet, vae, summarizer, cfg, {"weights": f"random (seed {seed})", "config": cfg.preset})

    @classmethod
    def from_official(
        cls,
        checkpoint: str | Path,
        config: str | Path | dict | ZoomLDMConfig | None = None,
        ema: bool = True,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = torch.float32,
    ) -> ZoomLDMPipeline:
        """Read the authors' checkpoint (flat or ``{"state_dict"}``, ``.ckpt`` or ``.safetensors``).

        ``config`` is a preset name (``brca``/``naip``), the authors' yaml, or None to use a
        ``config.yaml`` beside the file or recognise a published architecture from the weights' shapes.
        ``ema`` picks the EMA UNet (what the authors sample with); ``ema=False`` the live weights.
        """
        from .checkpoints import convert_official, guess_preset, load_into, read_state_dict

        checkpoint = Path(checkpoint)
        sd = read_state_dict(checkpoint)
        if config is None:
            sibling = checkpoint.parent / "config.yaml"
            config = sibling if sibling.is_file() else guess_preset(sd)
            if config is None:
                raise ZoomLDMError(
                    f"{checkpoint.name}: pass --config (brca, naip or the yaml it was trained with); "
                    "the architecture is not one of the published ones"
                )
        cfg = ZoomLDMConfig.resolve(config)
        hint = f" (config: {cfg.preset or 'yaml'}; is this a checkpoint of another model? pass the matching --config)"
        weights = convert_official(sd, cfg, ema=ema)
        with torch.device("meta"):  # build without allocating, then load the real tensors
            unet, vae, summarizer = build_unet(cfg.unet), build_vae(cfg.vae), Summarizer(**cfg.summarizer)
        for module, state, name in (
            (unet, weights.unet, "unet"),
            (vae, weights.vae, "vae"),
            (summarizer, weights.summarizer, "summarizer"),
        ):
            load_into(module, state, name, weights.origin, hint)  # validates keys and shapes
            module.load_state_dict(state, strict=True, assign=True)
        use_official_quantizer(vae)
        prov = {
            "checkpoint": str(checkpoint),
            "format": "official",
            "ema": ema,
            "ema_num_updates": weights.ema_num_updates,
            "config": cfg.preset or str(config),
        }
        return cls(unet, vae, summarizer, cfg, prov).to(device=device, dtype=dtype)

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path,
        config: str | Path | None = None,
        ema: bool = True,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = torch.float32,
    ) -> ZoomLDMPipeline:
        """Our format (a ``save_pretrained`` directory), an official file, or a hub id / ``brca`` / ``naip``."""
        from diffusers import UNet2DConditionModel, VQModel

        from .checkpoints import resolve_checkpoint

        src = resolve_checkpoint(checkpoint, config)
        if src.kind == "official":
            return cls.from_official(src.path, config or src.config, ema=ema, device=device, dtype=dtype)
        meta = json.loads((src.path / "zoomldm.json").read_text())
        if meta.get("format") != "zoomldm":
            raise ZoomLDMError(f"{src.path}/zoomldm.json is not a zoomldm model description")
        cfg = ZoomLDMConfig.from_dict(meta["config"])
        unet = UNet2DConditionModel.from_pretrained(src.path / "unet")
        vae = use_official_quantizer(VQModel.from_pretrained(src.path / "vae"))
        summarizer = Summarizer.from_pretrained(src.path / "summarizer")
        prov = dict(meta.get("provenance", {}), checkpoint=str(src.path), format="zoomldm")
        return cls(unet, vae, summarizer, cfg, prov).to(device=device, dtype=dtype)

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write our format (safetensors + JSON configs) atomically: a crash never leaves half a model."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            with unfused(self.unet, self.vae):  # never save the inference-only fused projections
                for name, module in (("unet", self.unet), ("vae", self.vae), ("summarizer", self.summarizer)):
                    module.save_pretrained(tmp / name, safe_serialization=True)
            meta = {
                "format": "zoomldm",
                "version": FORMAT_VERSION,
                "config": self.config.to_dict(),
                "provenance": dict(self.provenance, **(extra or {})),
            }
            (tmp / "zoomldm.json").write_text(json.dumps(meta, indent=2, default=str))
            replace_dir(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return directory

    def to(
        self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
    ) -> ZoomLDMPipeline:
        """Move the networks; ``dtype`` (fp32/fp16/bf16) applies to the UNet and Summarizer, the VQ stays fp32
        on CPU (half-precision convolutions are slow or missing there)."""
        dt = _dtype(dtype) if dtype is not None else None
        on_gpu = torch.device(device or self.device).type == "cuda"
        for module, wanted in ((self.unet, dt), (self.summarizer, dt), (self.vae, dt if on_gpu else None)):
            if wanted is None or wanted == module.dtype:
                module.to(device=device)
            else:
                module.to(device=device, dtype=wanted)
        return self

    def optimize(
        self,
        *,
        channels_last: bool | None = None,
        fuse_projections: bool = True,
        compile: bool | str = False,
    ) -> ZoomLDMPipeline:
        """Inference speed settings, in place (fused QKV projections, NHWC convolutions — default on CUDA
        only —, optional ``torch.compile``); see :mod:`zoomldm.models.inference`. Outputs change only by
        floating-point rounding; ``save_pretrained`` still writes the plain weights. Call after ``.to()``."""
        applied = optimize_for_inference(
            self.unet,
            self.vae,
            channels_last=channels_last,
            fuse_projections=fuse_projections,
            compile=compile,
        )
        self.inference_settings = applied
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def scales(self) -> Scales:
        return self.config.scales

    # ------------------------------------------------------------------------------------------
    # building blocks
    # ------------------------------------------------------------------------------------------
    def magnification(self, value: str | int | Magnification) -> Magnification:
        return self.scales.parse(value)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] ``[B,3,H,W]`` → unquantised latents ``[B,3,H/4,W/4]`` (float32)."""
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(images.to(self.device, vae_dtype)).latents.float()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Latents → images in [-1, 1] (quantising first, as the official ``decode_first_stage``)."""
        vae_dtype = next(self.vae.parameters()).dtype
        out = self.vae.decode(latents.to(self.device, vae_dtype), force_not_quantize=not quantize).sample
        return out.float().clamp(-1, 1)

    @torch.no_grad()
    def condition(
        self,
        ssl: torch.Tensor | Sequence[torch.Tensor],
        magnification: str | int | Magnification | Sequence[str | int | Magnification],
        prepare: bool = True,
    ) -> torch.Tensor:
        """Summarizer context ``[B,65,D]`` for raw SSL grids (pooled + standardised when ``prepare``)."""
        grids = (
            list(ssl.unbind(0))
            if isinstance(ssl, torch.Tensor) and ssl.dim() == 4
            else ([ssl] if isinstance(ssl, torch.Tensor) else list(ssl))
        )
        if prepare:
            grids = [prepare_grid(g) for g in grids]
        mags = magnification if isinstance(magnification, list | tuple) else [magnification] * len(grids)
        idx = torch.tensor([self.magnification(m).index for m in mags], device=self.device)
        dtype = self.summarizer.dtype
        return self.summarizer([g.to(self.device, dtype) for g in grids], idx).float()

    def denoise(
        self,
        latents: torch.Tensor,
        context: torch.Tensor,
        num_inference_steps: int = 50,
        guidance_scale: float = 2.0,
        scheduler: str = "ddim",
        uncond: torch.Tensor | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
        callback: Callable | None = None,
        progress: bool = True,
    ) -> torch.Tensor:
        """The guided denoising loop from the given initial noise; returns the final latents."""
        _check_sampling_args(num_inference_steps, guidance_scale)
        sched = make_scheduler(scheduler, self.config.schedule)
        with torch.no_grad():
            return _denoise(
                self.unet,
                sched,
                latents.to(self.device),
                context.to(self.device),
                num_inference_steps,
                guidance_scale,
                uncond,
                eta,
                generator,
                chunk_size,
                callback,
                progress,
            )

    # ------------------------------------------------------------------------------------------
    # patch sampling
    # ------------------------------------------------------------------------------------------
    def __call__(
        self,
        ssl: torch.Tensor | Sequence[torch.Tensor] | None = None,
        magnification: str | int | Magnification = 0,
        num_images: int = 1,
        num_inference_steps: int = 50,
        guidance_scale: float = 2.0,
        scheduler: str = "ddim",
        seed: int | None = 0,
        batch_size: int = 16,
        context: torch.Tensor | None = None,
        prepare: bool = True,
        progress: bool = True,
    ) -> PatchSamplingOutput:
        """Generate ``num_images`` patches at ``magnification``.

        Conditions: ``ssl`` is one raw grid ``[C,h,w]`` (used for every image), a batch ``[N,C,h,w]``
        or a list of N grids; or ``context`` gives Summarizer-space tokens ``[N or 1, 65, D]`` directly
        (e.g. sampled by the CDM). The initial noise for all N images is drawn at once from ``seed``,
        so the result does not depend on ``batch_size``.
        """
        _check_sampling_args(num_inference_steps, guidance_scale)
        if num_images < 1 or batch_size < 1:
            raise ZoomLDMError("num_images and batch_size must be at least 1")
        mag = self.magnification(magnification)
        if context is None:
            if ssl is None:
                raise ZoomLDMError("give SSL embeddings (ssl=…) or conditioning tokens (context=…)")
            grids = (
                list(ssl.unbind(0))
                if isinstance(ssl, torch.Tensor) and ssl.dim() == 4
                else ([ssl] * num_images if isinstance(ssl, torch.Tensor) else list(ssl))
            )
            if len(grids) == 1:
                grids = grids * num_images
            if len(grids) != num_images:
                raise ZoomLDMError(f"got {len(grids)} SSL grids for {num_images} images")
            context = torch.cat(
                [
                    self.condition(grids[i : i + batch_size], mag, prepare)
                    for i in range(0, num_images, batch_size)
                ]
            )
        else:
            context = context.float()
            if context.shape[0] == 1:
                context = context.expand(num_images, -1, -1)
            if context.shape[0] != num_images or context.shape[-1] != self.config.context_dim:
                raise ZoomLDMError(
                    f"context must be [{num_images}, 65, {self.config.context_dim}]; got {list(context.shape)}"
                )
        gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
        size = self.config.latent_size
        noise = torch.randn(num_images, self.unet.config.in_channels, size, size, generator=gen)
        latents, images = [], []
        for i in range(0, num_images, batch_size):
            z = self.denoise(
                noise[i : i + batch_size],
                context[i : i + batch_size],
                num_inference_steps,
                guidance_scale,
                scheduler,
                generator=gen,
                progress=progress,
            )
            latents.append(z.cpu())
            images.append(to_uint8(self.decode_latents(z)))
        settings = {
            "magnification": mag.name,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "scheduler": scheduler,
            "seed": seed,
            "num_images": num_images,
            **self.provenance,
        }
        if self.inference_settings:
            settings["inference_settings"] = self.inference_settings
        return PatchSamplingOutput(np.concatenate(images), torch.cat(latents), settings)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] ``[B,3,H,W]`` → uint8 ``[B,H,W,3]`` as the official notebooks (``clamp((x+1)/2)·255``)."""
    x = ((images.float().clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _check_sampling_args(steps: int, guidance: float) -> None:
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ZoomLDMError(f"steps must be an integer in 1..{MAX_STEPS}; got {steps}")
    if not 0.0 <= float(guidance) <= MAX_GUIDANCE:
        raise ZoomLDMError(
            f"guidance must be in 0..{MAX_GUIDANCE} (s = 1 is no guidance, the authors use 2); got {guidance}"
        )
