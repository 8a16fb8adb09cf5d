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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .conditioning import prepare_grid
from .config import ZoomLDMConfig
from .errors import ConfigError, InputError, ZoomLDMError
from .fsutil import check_output, replace_dir
from .models import Summarizer, build_unet, build_vae, use_official_quantizer
from .models.inference import optimize_for_inference, unfused
from .sampling.denoise import denoise as _denoise
from .scales import Magnification, Scales
from .schedule import make_scheduler

if TYPE_CHECKING:
    from .sampling.decode import DecodeConfig
    from .sampling.inversion import InversionConfig
    from .sampling.joint import LargeImageResult
    from .sampling.newton import JointSamplingConfig
    from .sampling.postprocess import PostprocessConfig
    from .sampling.superres import SRConfig

FORMAT_VERSION = 1
MAX_GUIDANCE = 50.0
MAX_STEPS = 1000
#: a model folder's optional Conditioning Diffusion Model (reference-free sampling; ``train-cdm`` format)
CDM_DIR = "cdm"


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
        raise ConfigError(f"unknown dtype {value!r}; expected one of {', '.join(table)}") from None


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
        #: the CDM shipped in the model's folder (``<model>/cdm/``, trained on this model's Summarizer
        #: tokens; the embedded model has one), used for reference-free sampling when no other is given
        self.cdm_dir: Path | None = None

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: str | Path | ZoomLDMConfig = "tiny", seed: int = 0) -> ZoomLDMPipeline:
        """Randomly initialised networks of the given architecture (deterministic by ``seed``)."""
        if isinstance(config, str | Path) and Path(config).is_dir():
            from .errors import ConfigError

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
        checkpoint: str | Path | None = None,
        config: str | Path | None = None,
        ema: bool = True,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = torch.float32,
    ) -> ZoomLDMPipeline:
        """Our format (a ``save_pretrained`` directory), an official file, a hub id / ``brca`` / ``naip``, or
        ``embedded`` (the package's offline model). None: the package's default rule
        (:func:`zoomldm.models.embedded.default_checkpoint`: ``$ZOOMLDM_CHECKPOINT``, else the published
        BRCA model when cached or reachable, else the embedded model, with a one-line note)."""
        from diffusers import UNet2DConditionModel, VQModel

        from .checkpoints import resolve_checkpoint
        from .errors import CheckpointError
        from .models.embedded import default_checkpoint
        from .tensorfiles import load_pretrained_component, read_json_object

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
        if isinstance(magnification, list | tuple):
            levels = [self.magnification(m).index for m in magnification]
        else:  # one level for the batch: parsed once, not once per grid
            levels = [self.magnification(magnification).index] * len(grids)
        idx = torch.tensor(levels, device=self.device)
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
        cdm: str | Path | Any | None = None,
        cdm_steps: int = 200,
    ) -> PatchSamplingOutput:
        """Generate ``num_images`` patches at ``magnification``.

        Conditions: ``ssl`` is one raw grid ``[C,h,w]`` (used for every image), a batch ``[N,C,h,w]``
        or a list of N grids; or ``context`` gives Summarizer-space tokens ``[N or 1, 65, D]`` directly;
        or neither, reference-free: the tokens are sampled by the Conditioning Diffusion Model ``cdm`` (a
        folder, the authors' file or a :class:`~zoomldm.models.cdm.ConditioningDiT`; default the model's
        own, :attr:`cdm_dir`) in ``cdm_steps`` DDIM steps, seeded by ``seed``. The initial noise for all
        N images is drawn at once from ``seed``, so the result does not depend on ``batch_size``.
        """
        _check_sampling_args(num_inference_steps, guidance_scale)
        if num_images < 1 or batch_size < 1:
            raise ConfigError("num_images and batch_size must be at least 1")
        mag = self.magnification(magnification)
        if ssl is not None and cdm is not None:
            raise ConfigError("give ssl= (a real region's embeddings) or cdm= (reference-free), not both")
        reference_free = context is None and ssl is None
        if reference_free:
            context = self._cdm_context(cdm, mag, num_images, cdm_steps, seed)
        if context is None:
            grids = (
                list(ssl.unbind(0))
                if isinstance(ssl, torch.Tensor) and ssl.dim() == 4
                else ([ssl] * num_images if isinstance(ssl, torch.Tensor) else list(ssl))
            )
            if len(grids) == 1:
                grids = grids * num_images
            if len(grids) != num_images:
                raise InputError(f"got {len(grids)} SSL grids for {num_images} images")
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
                raise InputError(
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
        if reference_free:
            source = cdm if cdm is not None else self.cdm_dir
            settings["conditions"] = (
                f"CDM {source if isinstance(source, str | Path) else type(source).__name__}"
            )
            settings["cdm_steps"] = cdm_steps
        if self.inference_settings:
            settings["inference_settings"] = self.inference_settings
        return PatchSamplingOutput(np.concatenate(images), torch.cat(latents), settings)

    def _cdm_context(self, cdm, mag: Magnification, num_images: int, steps: int, seed: int | None):
        """Reference-free conditioning: ``num_images`` token sets of the CDM (``cdm`` or :attr:`cdm_dir`)."""
        from .models.cdm import check_cdm_fits
        from .models.cdm_diffusion import sample_cdm

        cdm = cdm if cdm is not None else self.cdm_dir
        if cdm is None:
            raise InputError(
                "give SSL embeddings (ssl=…), conditioning tokens (context=…) or a CDM (cdm=…) for "
                "reference-free sampling; this model ships no CDM of its own"
            )
        if steps < 1:
            raise ConfigError(f"cdm_steps {steps}: must be at least 1")
        model = _load_cdm(cdm, self.device)
        check_cdm_fits(self, model)  # the rule of generate_large's reference-free guide
        generator = torch.Generator(self.device).manual_seed(seed if seed is not None else torch.seed())
        with torch.no_grad():
            return sample_cdm(model, mag.index, batch_size=num_images, num_steps=steps, generator=generator)

    # ------------------------------------------------------------------------------------------
    # large images (SPEC §4) and super-resolution (SPEC §5)
    # ------------------------------------------------------------------------------------------
    def generate_large(
        self,
        reference: str | Path | Any | None = None,
        *,
        guide: str | int | Magnification | None = None,
        target: str | int | Magnification | None = None,
        size: int | None = None,
        region: tuple[int, int, int, int] | None = None,
        out: str | Path | None = None,
        cdm: str | Path | Any | None = None,
        encoder: str | Any | None = None,
        encoder_weights: str | Path | None = None,
        config: JointSamplingConfig | None = None,
        postprocess: PostprocessConfig | bool | None = True,
        decode: DecodeConfig | None = None,
        inversion: InversionConfig | None = None,
        guide_steps: int = 50,
        seed: int = 0,
        compression: str = "jpeg",
        resume: bool = True,
        overwrite: bool = True,
        live_unet=None,
        keep_in_memory: bool | None = None,
        progress: bool = True,
        **options: Any,
    ) -> LargeImageResult:
        """Generate a large image (e.g. 4096² at 20x under a 1.25x guide) by joint multi-scale sampling.

        Args:
            reference: the real region that conditions the image, at base resolution under the guide
                (4096² at 20x for a 1.25x guide): an image (path, PIL image, uint8 ``[H, W, 3]`` array),
                embedded tile by tile with ``encoder``, or its unpooled SSL grid (``[C, n, n]`` tensor or
                float array, or a ``.npy``/``.pt``/``.safetensors`` file). None: reference-free, with ``cdm``.
            guide: guide magnification (``"1.25x"``: k = 16 → 4096² at 20x). Default: the one ``size``
                needs, else the one whose field of view the reference covers.
            target: magnification of the output (default the base level, 20x / 1x).
            size: side of the output in pixels; ratios above 16 cascade two scale pairs.
            region: ``(x, y, w, h)`` in output pixels (multiples of 256): generate only that viewport.
            out: ``.png`` / ``.tif`` / ``.ome.tif`` to write (with ``<stem>_guide.png`` and ``<stem>.json``
                beside it, holding ``metrics`` and ``settings``). None: nothing is written; the image is
                returned in memory (up to :data:`zoomldm.sampling.output.MAX_IN_MEMORY_PIXELS`, 8192²;
                larger images need ``out``).
            cdm: the Conditioning Diffusion Model for reference-free generation: a folder / official file
                or a :class:`~zoomldm.models.cdm.ConditioningDiT`.
            guide_steps: PLMS steps of the CDM-conditioned guide patch (reference-free only).
            encoder, encoder_weights: SSL encoder of an image reference: a name (``uni``, ``dinov2``,
                ``timm:<name>``, ``embedded``) with a local weights file, or an encoder object. None: the
                model's own (``embedded`` for the embedded offline model, else ``uni``).
            config, postprocess, decode, inversion: the settings dataclasses (official defaults;
                ``postprocess=False`` skips seam removal).
            seed: seed of every noise draw. compression: TIFF tiles (``jpeg``, ``zlib``, ``none``).
            resume: continue an interrupted run from its state beside ``out`` (the last finished canvas
                block of the joint stage, the last finished post-processing step).
            overwrite: replace an existing ``out`` (False: refuse it with an ``OutputError``, the CLI's
                default without ``--overwrite``).
            live_unet: the live UNet, needed only with ``post_live_weights=True``.
            keep_in_memory: also return an image that is written to ``out`` (default: when it fits).
            **options: settings by their command-line names, applied on top of the dataclasses: ``t0``,
                ``stride``, ``guidance_w``, ``fd_step``, ``newton_lr``, ``inner_steps``, ``tile_batch``,
                ``colab_update``, ``newton_max_t``, ``no_postprocess``, ``post_t0``, ``post_stride``, ``post_guidance_w``,
                ``post_window``, ``post_window_stride``, ``post_interp``, ``window_batch``,
                ``post_live_weights``, ``decode_batch``, ``decode_stride``, ``inversion_steps``, ``inversion_lr``,
                ``sim_weight`` (:data:`zoomldm.sampling.settings.OPTIONS`).

        Returns:
            :class:`~zoomldm.sampling.joint.LargeImageResult`: ``image`` (uint8 ``[H, W, 3]`` or None),
            ``path``, ``guide_image``, ``latent`` (None above 8192² pixels), ``metrics`` (constraint PSNR / MAE vs the guide) and
            ``settings`` (the record written to ``<stem>.json``).
        """
        from .sampling.joint import generate_large_image, plan_stages
        from .sampling.levels import parse_level
        from .sampling.reference import embed_reference, read_reference, reference_side
        from .sampling.settings import large_image_settings

        # 1. validate the whole request (settings, levels, inputs, output path) before any model work
        if reference is not None and cdm is not None:
            raise ConfigError("give reference= (a real region) or cdm= (reference-free), not both")
        if reference is None and cdm is None:
            cdm = self.cdm_dir  # the model's own CDM (e.g. the embedded model's), if it ships one
        if reference is None and cdm is None:
            raise InputError(
                "large images need a reference region (reference=/--reference: an image or its SSL grid); "
                "reference-free generation needs a CDM checkpoint (cdm=/--cdm; this model ships none)"
            )
        settings = large_image_settings(
            self, config=config, postprocess=postprocess, decode=decode, inversion=inversion, **options
        )
        ref = None if reference is None else read_reference(reference, self.config.ssl_channels)
        tmag = parse_level(self, target, "target magnification") if target is not None else self.scales[0]
        gmag = parse_level(self, guide, "guide magnification") if guide is not None else None
        if gmag is None and size is None and ref is not None:
            side = reference_side(ref, self.config.image_size)
            gmag = next((m for m in self.scales if m.grid_size == side and m.index > tmag.index), None)
            if gmag is None:
                raise ConfigError(
                    f"the reference ({_shape_text(ref)}) is not the field of view of a guide of this model; "
                    "give guide= (e.g. 1.25x) or size="
                )
        stages = plan_stages(self, gmag, tmag, size, region)
        plan = stages[-1]
        _check_out(out, plan.height, plan.width, compression, overwrite)
        cdm_model = _load_cdm(cdm, self.device) if cdm is not None else None

        # 2. the reference's SSL grid (an image is embedded tile by tile), then sample
        grid = ref
        if isinstance(ref, np.ndarray):
            what = Path(reference).name if isinstance(reference, str | Path) else "the reference image"
            grid = embed_reference(self, ref, stages[0].guide, encoder, encoder_weights, what)
        return generate_large_image(
            self,
            grid,
            guide=gmag,  # None: chosen there from size, or a coarse canvas past one guide patch (.coarse)
            target=plan.target,
            size=size,
            region=region,
            config=settings.sampling,
            postprocess=settings.postprocess or False,
            decode=settings.decode,
            seed=seed,
            out=out,
            cdm=cdm_model,
            inversion=settings.inversion,
            guide_steps=guide_steps,
            live_unet=live_unet,
            keep_in_memory=keep_in_memory,
            compression=compression,
            resume=resume,
            progress=progress,
        )

    def super_resolve(
        self,
        image: str | Path | Any,
        from_magnification: str | int | Magnification = "5x",
        to: str | int | Magnification | None = None,
        *,
        out: str | Path | None = None,
        resize: int | None = None,
        region: tuple[int, int, int, int] | None = None,
        config: SRConfig | None = None,
        postprocess: PostprocessConfig | bool | None = True,
        decode: DecodeConfig | None = None,
        inversion: InversionConfig | None = None,
        seed: int = 0,
        compression: str = "jpeg",
        resume: bool = True,
        overwrite: bool = True,
        live_unet=None,
        inversion_unet=None,
        keep_in_memory: bool | None = None,
        progress: bool = True,
        **options: Any,
    ) -> LargeImageResult:
        """Super-resolve a low-magnification image (e.g. 5x → 20x, 4×) by condition inversion and
        constrained sampling under the input (SPEC §5).

        Args:
            image: path, PIL image or uint8 ``[H, W, 3]`` array at ``from_magnification``, a whole number
                of 256² patches (``resize=256`` turns the authors' 1024² display copy ``lr.jpg`` back into
                their 256² input).
            from_magnification: magnification of the input. to: of the output (default the base level).
            out, region, seed, compression, resume, overwrite, live_unet, keep_in_memory, progress,
                **options: as
                :meth:`generate_large` (the Newton iterations default to the SR notebook's 5).
            config: :class:`~zoomldm.sampling.superres.SRConfig`; postprocess, decode, inversion: as
                :meth:`generate_large`. inversion_unet: UNet of the inversion (default this pipeline's).

        Returns:
            :class:`~zoomldm.sampling.joint.LargeImageResult` whose ``guide_image`` is the input and whose
            metrics compare the downsampled output with it.
        """
        from .sampling.reference import read_image
        from .sampling.settings import large_image_settings
        from .sampling.superres import SRConfig, super_resolve

        settings = large_image_settings(
            self,
            sampling_cls=SRConfig,
            config=config,
            postprocess=postprocess,
            decode=decode,
            inversion=inversion,
            **options,
        )
        if out is not None:  # the written-ness of the path; its kind and size are checked by super_resolve
            check_output(out, "out", overwrite=overwrite)
        lr = read_image(image, resize, what="image")
        tile = self.config.image_size
        if lr.shape[0] % tile or lr.shape[1] % tile:
            name = Path(image).name if isinstance(image, str | Path) else "the image"
            raise InputError(
                f"{name} is {lr.shape[1]}×{lr.shape[0]}; the input must be a whole number of {tile}² patches "
                f"at {from_magnification} (resize it, e.g. resize={tile} / --resize {tile} for one patch)"
            )
        return super_resolve(
            self,
            lr,
            from_magnification,
            to_magnification=to,
            config=settings.sampling,
            inversion=settings.inversion,
            postprocess=settings.postprocess or False,
            decode=settings.decode,
            seed=seed,
            out=out,
            region=region,
            inversion_unet=inversion_unet,
            live_unet=live_unet,
            keep_in_memory=keep_in_memory,
            compression=compression,
            resume=resume,
            progress=progress,
        )

    def plan_large(self, command: str = "generate", **request: Any):
        """The plan of a :meth:`generate_large` (``command="generate"``) or :meth:`super_resolve`
        (``"superres"``, with ``input_shape=(H, W)`` and ``from_magnification``) request without doing it:
        stages, tiles, blocks, UNet rows, VQ passes, disk, peak host and GPU memory and time on this
        pipeline's device (:func:`zoomldm.sampling.plan.plan_large`; ``zoomldm generate --dry-run``).
        Settings go by CLI name as for the two methods, plus ``schedule`` and ``out``."""
        from .sampling.plan import plan_large

        return plan_large(self, command=command, **request)


def _shape_text(ref) -> str:
    if isinstance(ref, np.ndarray):
        return f"a {ref.shape[1]}×{ref.shape[0]} image"
    return f"a {'×'.join(str(v) for v in ref.shape[1:])} SSL grid"


def _check_out(out, height: int, width: int, compression: str, overwrite: bool) -> None:
    """The output path before any model work: kind and size (``check_output_path``) and that it can be
    written (a folder, not under a file; an existing file only with ``overwrite``)."""
    from .sampling.output import check_output_path

    check_output_path(out, height, width, compression)
    if out is not None:
        check_output(out, "out", overwrite=overwrite)


def _load_cdm(cdm, device):
    """A CDM given as a model or a path (our folder, a train-cdm checkpoint or the authors' DiT file)."""
    if isinstance(cdm, str | Path):
        from .models.cdm import load_cdm

        if not Path(cdm).exists():
            raise InputError(f"{cdm}: CDM checkpoint not found (train one with zoomldm train-cdm)")
        return load_cdm(cdm)[0].to(device).eval()  # its errors name the file (models.cdm)
    return cdm


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] ``[B,3,H,W]`` → uint8 ``[B,H,W,3]`` as the official notebooks (``clamp((x+1)/2)·255``)."""
    x = ((images.float().clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _check_sampling_args(steps: int, guidance: float) -> None:
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"steps must be an integer in 1..{MAX_STEPS}; got {steps}")
    if not 0.0 <= float(guidance) <= MAX_GUIDANCE:
        raise ConfigError(
            f"guidance must be in 0..{MAX_GUIDANCE} (s = 1 is no guidance, the authors use 2); got {guidance}"
        )
