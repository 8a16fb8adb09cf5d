"""``ZoomLDMModel``: the loaded ZoomLDM — UNet, VQ-f4 autoencoder, Summarizer, config and provenance.

It owns the three networks (``.unet`` a diffusers ``UNet2DConditionModel``, ``.vae`` a diffusers
``VQModel``, ``.summarizer`` our :class:`~zoomldm.models.Summarizer`) and the config. Loading:

* :meth:`ZoomLDMModel.from_official` — the authors' CompVis checkpoint (+ yaml or preset), EMA UNet by default;
* :meth:`ZoomLDMModel.from_pretrained` — our format (``save_pretrained``), an official file, or a hub id;
* :meth:`ZoomLDMModel.from_config` — random initialisation (tests, the offline demo, training from scratch).

Training, data preparation and feature extraction take this object; sampling is
:class:`zoomldm.pipeline.ZoomLDMPipeline`'s, a subclass. The loaders are classmethods that build ``cls``,
so ``ZoomLDMPipeline.from_pretrained(...)`` gives a pipeline and ``ZoomLDMModel.from_pretrained(...)`` a model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints import (
    convert_official,
    default_checkpoint,
    guess_preset,
    load_into,
    read_state_dict,
    resolve_checkpoint,
)
from ..conditioning import prepare_grid
from ..config import ZoomLDMConfig
from ..dtypes import torch_dtype
from ..errors import CheckpointError, ConfigError, ZoomLDMError
from ..fsutil import replace_dir
from ..scales import Magnification, Scales
from ..tensorfiles import load_pretrained_component, read_json_object
from .autoencoder import build_vae, use_official_quantizer
from .inference import optimize_for_inference, unfused
from .summarizer import Summarizer
from .unet import build_unet

FORMAT_VERSION = 1
#: a model folder's optional Conditioning Diffusion Model (reference-free sampling; ``train-cdm`` format)
CDM_DIR = "cdm"


class ZoomLDMModel:
    """The loaded ZoomLDM: its three networks, config and provenance, with loading, saving, moving,
    encoding, decoding and conditioning. :class:`~zoomldm.pipeline.ZoomLDMPipeline` adds sampling."""

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
        #: the CDM shipped in the model's folder (``<model>/cdm/``, trained on this model's Summarizer
        #: tokens; the embedded model has one), used for reference-free sampling when no other is given
        self.cdm_dir: Path | None = None

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: str | Path | ZoomLDMConfig = "tiny", seed: int = 0) -> ZoomLDMModel:
        """Randomly initialised networks of the given architecture (deterministic by ``seed``)."""
        if isinstance(config, str | Path) and Path(config).is_dir():
            raise ConfigError(
                f"{config}: is a directory; pass a preset (brca, naip, tiny) or a config yaml file"
            )
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
    ) -> ZoomLDMModel:
        """Read the authors' checkpoint (flat or ``{"state_dict"}``, ``.ckpt`` or ``.safetensors``).

        ``config`` is a preset name (``brca``/``naip``), the authors' yaml, or None to use a
        ``config.yaml`` beside the file or recognise a published architecture from the weights' shapes.
        ``ema`` picks the EMA UNet (what the authors sample with); ``ema=False`` the live weights.
        """

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
        checkpoint: str | Path | None = None,
        config: str | Path | None = None,
        ema: bool = True,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = torch.float32,
    ) -> ZoomLDMModel:
        """Our format (a ``save_pretrained`` directory), an official file, a hub id / ``brca`` / ``naip``, or
        ``embedded`` (the package's offline model). None: the package's default rule
        (:func:`zoomldm.checkpoints.default_checkpoint`: ``$ZOOMLDM_CHECKPOINT``, else the published
        BRCA model when cached or reachable, else the embedded model, with a one-line note)."""
        from diffusers import UNet2DConditionModel, VQModel

        src = resolve_checkpoint(default_checkpoint(checkpoint), config)
        if src.kind == "official":
            return cls.from_official(src.path, config or src.config, ema=ema, device=device, dtype=dtype)
        # damaged files (garbled JSON, a truncated .safetensors, a missing sub-folder) are one-line
        # CheckpointErrors that name the file (zoomldm.tensorfiles)
        meta = read_json_object(src.path / "zoomldm.json", "model description")
        if meta.get("format") != "zoomldm" or not isinstance(meta.get("config"), dict):
            raise CheckpointError(
                f"{src.path / 'zoomldm.json'} is not a zoomldm model description (re-save the model)"
            )
        try:
            cfg = ZoomLDMConfig.from_dict(meta["config"])
        except TypeError as err:  # a required field is missing
            raise CheckpointError(
                f"{src.path / 'zoomldm.json'}: incomplete model config ({err}); re-save the model"
            ) from err
        unet = load_pretrained_component(UNet2DConditionModel, src.path / "unet", "UNet")
        vae = use_official_quantizer(load_pretrained_component(VQModel, src.path / "vae", "VQ autoencoder"))
        summarizer = load_pretrained_component(Summarizer, src.path / "summarizer", "Summarizer")
        saved = meta.get("provenance")
        prov = dict(saved if isinstance(saved, dict) else {}, checkpoint=str(src.path), format="zoomldm")
        pipe = cls(unet, vae, summarizer, cfg, prov).to(device=device, dtype=dtype)
        if (src.path / CDM_DIR / "config.json").is_file():
            pipe.cdm_dir = src.path / CDM_DIR
        return pipe

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
    ) -> ZoomLDMModel:
        """Move the networks; ``dtype`` (fp32/fp16/bf16) applies to the UNet and Summarizer, the VQ stays fp32
        on CPU (half-precision convolutions are slow or missing there)."""
        dt = torch_dtype(dtype) if dtype is not None else None
        on_gpu = torch.device(device or self.device).type == "cuda"
        for module, wanted in ((self.unet, dt), (self.summarizer, dt), (self.vae, dt if on_gpu else None)):
            if wanted is None or wanted == module.dtype:
                module.to(device=device)
            else:
                _cast(module, device, wanted)
        return self

    def optimize(
        self,
        *,
        channels_last: bool | None = None,
        fuse_projections: bool = True,
        compile: bool | str = False,
    ) -> ZoomLDMModel:
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
        if isinstance(magnification, list | tuple):
            levels = [self.magnification(m).index for m in magnification]
        else:  # one level for the batch: parsed once, not once per grid
            levels = [self.magnification(magnification).index] * len(grids)
        idx = torch.tensor(levels, device=self.device)
        dtype = self.summarizer.dtype
        return self.summarizer([g.to(self.device, dtype) for g in grids], idx).float()


def _cast(module: torch.nn.Module, device: Any, dtype: torch.dtype) -> None:
    """``module.to(device, dtype)`` without diffusers' spurious warning.

    diffusers' ``ModelMixin.to`` warns on every dtype cast ("There are modules in UNet2DConditionModel
    that should be kept in float32: []") even for a model that keeps none: its test is ``[] is not None``
    (diffusers 0.42, ``modeling_utils.py``). Our three networks declare no float32 modules, so they are cast
    with torch's own ``Module.to``; a model that does declare some keeps diffusers' path and its warning.
    """
    if getattr(module, "_keep_in_fp32_modules", None):
        module.to(device=device, dtype=dtype)
    else:
        torch.nn.Module.to(module, device=device, dtype=dtype)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] ``[B,3,H,W]`` → uint8 ``[B,H,W,3]`` as the official notebooks (``clamp((x+1)/2)·255``)."""
    x = ((images.float().clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
