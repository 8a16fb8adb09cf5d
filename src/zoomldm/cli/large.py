"""Large images: ``zoomldm generate`` (joint multi-scale sampling) and ``zoomldm superres``.

Both are thin layers over :func:`zoomldm.sampling.joint.generate_large_image` and
:func:`zoomldm.sampling.superres.super_resolve`; every hyper-parameter has the official value as default.
The output is a PNG up to 2048² pixels and a pyramidal TIFF (written tile by tile) above, unless ``--out``
names the file; ``<stem>_guide.png`` and ``<stem>.json`` (metrics, settings) are written beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from .core import (
    CHECKPOINT_ENV,
    COMPILE_OPTION,
    DEFAULT_CHECKPOINT,
    OPTIMIZE_OPTION,
    apply_speed_settings,
    resolve_device,
)

GRID_SUFFIXES = {".npy", ".pt", ".pth", ".safetensors"}
PNG_MAX_SIDE = 2048

# -- options shared by both commands (typer needs them spelled out per command; defaults live here) --
_CKPT = typer.Option(
    None,
    "--checkpoint",
    help=f"model dir, official file or hub id (default ${CHECKPOINT_ENV} or {DEFAULT_CHECKPOINT})",
)
_CONFIG = typer.Option(None, "--config", "-c", help="preset or yaml for an official checkpoint")
_TARGET = typer.Option(
    None, "--target", "--to", help="output magnification (default: the base level, 20x / 1x)"
)
_REGION = typer.Option(
    None, "--region", help="X,Y,W,H in output pixels (multiples of 256): generate only there"
)
_T0 = typer.Option(1000, "--t0", help="first timestep of constrained sampling")
_STRIDE = typer.Option(50, "--stride", help="timestep stride (20 steps for 1000/50)")
_W = typer.Option(2.0, "--guidance-w", help="w in (w+1)·e_c − w·e_u (w = 2 is s = 3, official)")
_H = typer.Option(0.005, "--fd-step", help="finite-difference step h of the Newton JVPs")
_LR = typer.Option(0.5, "--newton-lr", help="Newton update rate")
_TILE_BATCH = typer.Option(16, "--tile-batch", help="tiles per batch (2 UNet rows each: cond + uncond)")
_COLAB = typer.Option(
    False, "--colab-update", help="Colab notebook outer update √(1−ā_prev)·ε (default: variance preserving)"
)
_NO_POST = typer.Option(False, "--no-postprocess", help="skip seam removal")
_POST_T0 = typer.Option(300, "--post-t0", help="post-processing re-noising timestep")
_POST_STRIDE = typer.Option(50, "--post-stride", help="post-processing timestep stride")
_POST_W = typer.Option(2.0, "--post-guidance-w", help="post-processing guidance g")
_POST_WINDOW = typer.Option(None, "--post-window", help="window in latent px (default: one tile, 64)")
_POST_WSTRIDE = typer.Option(None, "--post-window-stride", help="window stride in latent px (default 16)")
_POST_INTERP = typer.Option("slerp", "--post-interp", help="slerp (official) or linear")
_WINDOW_BATCH = typer.Option(16, "--window-batch", help="post-processing windows per UNet call")
_POST_LIVE = typer.Option(
    False, "--post-live-weights", help="post-process with the live UNet (official quirk)"
)
_DECODE_BATCH = typer.Option(16, "--decode-batch", help="VQ windows decoded at once")
_INV_STEPS = typer.Option(200, "--inversion-steps", help="condition-inversion Adam steps")
_INV_LR = typer.Option(0.1, "--inversion-lr", help="condition-inversion Adam learning rate")
_SIM = typer.Option(0.05, "--sim-weight", help="weight of the token-similarity term")
_SEED = typer.Option(0, "--seed")
_DEVICE = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda, cuda:1, …")
_DTYPE = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16 (UNet, Summarizer; VQ on GPU)")
_LIVE = typer.Option(False, "--live", help="sample with the live UNet weights instead of EMA")
_NO_RESUME = typer.Option(False, "--no-resume", help="ignore and do not write the resume state")
_COMPRESSION = typer.Option(
    "jpeg", "--compression", help="TIFF tiles: jpeg (quality 90), zlib (lossless), none"
)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("superres")(superres)


def _parse_region(text: str | None) -> tuple[int, int, int, int] | None:
    from ..errors import ZoomLDMError

    if text is None:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise ZoomLDMError(f"--region must be X,Y,W,H in pixels; got {text!r}") from None
    return x, y, w, h


def _load(checkpoint, config, live, device, dtype):
    from ..pipeline import ZoomLDMPipeline

    ckpt = checkpoint or os.environ.get(CHECKPOINT_ENV) or DEFAULT_CHECKPOINT
    return ckpt, ZoomLDMPipeline.from_pretrained(
        ckpt, config=config, ema=not live, device=device, dtype=dtype
    )


def _live_unet(ckpt, config, device, dtype):
    from ..pipeline import ZoomLDMPipeline

    return ZoomLDMPipeline.from_pretrained(ckpt, config=config, ema=False, device=device, dtype=dtype).unet


def _configs(
    joint_cls,
    t0,
    stride,
    w,
    h,
    lr,
    inner,
    tile_batch,
    colab,
    no_post,
    post_t0,
    post_stride,
    post_w,
    post_window,
    post_wstride,
    interp,
    window_batch,
    post_live,
    decode_batch,
    pipe,
):
    from ..sampling.decode import DecodeConfig
    from ..sampling.postprocess import PostprocessConfig

    joint = joint_cls(
        t0=t0,
        stride=stride,
        guidance_w=w,
        h=h,
        lr=lr,
        inner_steps=inner,
        tile_batch=tile_batch,
        variance_preserving_update=not colab,
    )
    post = (
        None
        if no_post
        else PostprocessConfig(
            t0=post_t0,
            stride=post_stride,
            guidance_w=post_w,
            window=post_window,
            window_stride=post_wstride,
            interp=interp,
            window_batch=window_batch,
            use_live_weights=post_live,
        )
    )
    tile = pipe.config.latent_size
    decode = DecodeConfig(window=tile, stride=max(tile // 4, 1), batch_size=decode_batch)
    return joint, post, decode


def _default_out(name: str, side: int) -> Path:
    return Path("outputs") / f"{name}.{'png' if side <= PNG_MAX_SIDE else 'tif'}"


def _report(result) -> None:
    m = result.metrics
    where = result.path or "memory"
    width, height = result.settings["region_px"][2:]
    typer.echo(
        f"wrote {where} ({width}×{height}); constraint vs guide: "
        f"PSNR {m['output']['psnr']:.2f} dB, MAE {m['output']['mae']:.2f} (tiles before post-processing: "
        f"{m['tiles']['psnr']:.2f} dB); {m['seconds']['total']:.0f} s"
    )


def generate(
    reference: Path = typer.Option(
        None,
        "--reference",
        help="base-resolution region image (embedded with "
        "--encoder) or its unpooled SSL grid (.npy/.pt/.safetensors)",
    ),
    guide: str = typer.Option(
        None, "--guide", help="guide magnification, e.g. 1.25x (k = 16 → 4096² at 20x)"
    ),
    target: str = _TARGET,
    size: int = typer.Option(
        None,
        "--size",
        help="output side in px (k × 256; above 4096 via a 1.25x cascade); picks the guide if omitted",
    ),
    region: str = _REGION,
    out: Path = typer.Option(
        None, "--out", help="output .tif/.ome.tif/.png (default outputs/large_<guide>.…)"
    ),
    cdm: Path = typer.Option(None, "--cdm", help="CDM checkpoint for reference-free generation"),
    encoder: str = typer.Option("uni", "--encoder", help="SSL encoder for an image --reference"),
    encoder_weights: str = typer.Option(
        None, "--encoder-weights", help="local encoder weights ('random': tests)"
    ),
    checkpoint: str = _CKPT,
    config: str = _CONFIG,
    t0: int = _T0,
    stride: int = _STRIDE,
    guidance_w: float = _W,
    fd_step: float = _H,
    newton_lr: float = _LR,
    inner_steps: int = typer.Option(10, "--inner-steps", help="Newton iterations per step (official 10)"),
    tile_batch: int = _TILE_BATCH,
    colab_update: bool = _COLAB,
    no_postprocess: bool = _NO_POST,
    post_t0: int = _POST_T0,
    post_stride: int = _POST_STRIDE,
    post_guidance_w: float = _POST_W,
    post_window: int = _POST_WINDOW,
    post_window_stride: int = _POST_WSTRIDE,
    post_interp: str = _POST_INTERP,
    window_batch: int = _WINDOW_BATCH,
    post_live_weights: bool = _POST_LIVE,
    decode_batch: int = _DECODE_BATCH,
    inversion_steps: int = _INV_STEPS,
    inversion_lr: float = _INV_LR,
    sim_weight: float = _SIM,
    seed: int = _SEED,
    device: str = _DEVICE,
    dtype: str = _DTYPE,
    live: bool = _LIVE,
    optimize: bool | None = OPTIMIZE_OPTION,
    compile: str | None = COMPILE_OPTION,
    no_resume: bool = _NO_RESUME,
    compression: str = _COMPRESSION,
) -> None:
    """Generate a large image (e.g. 4096² at 20x) jointly with a low-magnification guide (SPEC §4)."""
    from ..errors import ZoomLDMError
    from ..sampling.inversion import InversionConfig
    from ..sampling.joint import JointSamplingConfig, generate_large_image, plan_stages

    # 1. validate the request before loading encoders or sampling
    if reference is not None and cdm is not None:
        raise ZoomLDMError("give --reference (a real region) or --cdm (reference-free), not both")
    for path in (reference, cdm):
        if path is not None and not path.exists():
            raise ZoomLDMError(f"file not found: {path}")
    regions = _parse_region(region)
    device = resolve_device(device)
    ckpt, pipe = _load(checkpoint, config, live, device, dtype)
    stages = plan_stages(pipe, guide, target, size, regions)  # one scale pair, or a cascade of two
    first, plan = stages[0], stages[-1]
    joint, post, decode = _configs(
        JointSamplingConfig,
        t0,
        stride,
        guidance_w,
        fd_step,
        newton_lr,
        inner_steps,
        tile_batch,
        colab_update,
        no_postprocess,
        post_t0,
        post_stride,
        post_guidance_w,
        post_window,
        post_window_stride,
        post_interp,
        window_batch,
        post_live_weights,
        decode_batch,
        pipe,
    )
    inversion = InversionConfig(steps=inversion_steps, lr=inversion_lr, sim_weight=sim_weight)
    out = out or _default_out(
        f"large_{first.guide.key}_{plan.target.key}_seed{seed}", max(plan.height, plan.width)
    )

    # 2. conditions: the reference's SSL grid, or the CDM
    grid, cdm_model = None, None
    if reference is not None:
        grid = _reference_grid(reference, pipe, first, encoder, encoder_weights, device)
    elif cdm is not None:
        cdm_model = _load_cdm(cdm, device)
    live_unet = _live_unet(ckpt, config, device, dtype) if post_live_weights else None
    apply_speed_settings(pipe, optimize, compile, unet=live_unet)

    # 3. sample, post-process, decode, write
    result = generate_large_image(
        pipe,
        grid,
        guide=first.guide,
        target=plan.target,
        size=size,
        region=regions,
        config=joint,
        postprocess=post if post is not None else False,
        decode=decode,
        seed=seed,
        out=out,
        cdm=cdm_model,
        inversion=inversion,
        live_unet=live_unet,
        compression=compression,
        resume=not no_resume,
    )
    _report(result)


def _reference_grid(path: Path, pipe, plan, encoder: str, weights: str | None, device: str):
    import numpy as np
    from PIL import Image

    from ..conditioning import load_ssl_grid
    from ..data.encoders import build_encoder, encode_region_grid
    from ..errors import ZoomLDMError

    if path.suffix.lower() in GRID_SUFFIXES:
        return load_ssl_grid(path, channels=pipe.config.ssl_channels)
    tile = pipe.config.image_size
    side = plan.guide.grid_size * tile
    with Image.open(path) as im:
        if im.size != (side, side):
            raise ZoomLDMError(
                f"{path.name} is {im.size[0]}×{im.size[1]}; a {plan.guide} guide needs the {side}² region at "
                f"{pipe.scales[0]} under it (one SSL embedding per {tile}² tile)"
            )
        image = np.asarray(im.convert("RGB"))
    enc = build_encoder(encoder, weights=weights, device=device)
    if enc.dim != pipe.config.ssl_channels:
        raise ZoomLDMError(
            f"encoder {encoder} gives {enc.dim}-d embeddings; the model expects {pipe.config.ssl_channels}"
        )
    return encode_region_grid(enc, image, tile=tile).cpu()


def _load_cdm(path: Path, device: str):
    from ..models.cdm import ConditioningDiT, load_official_cdm

    model = ConditioningDiT.from_pretrained(path) if path.is_dir() else load_official_cdm(path)[0]
    return model.to(device).eval()


def superres(
    lr_image: Path = typer.Argument(
        ..., help="low-resolution image at --from (a whole number of 256² patches)"
    ),
    source: str = typer.Option(..., "--from", help="magnification of the input, e.g. 5x (→ 20x is 4×)"),
    target: str = _TARGET,
    out: Path = typer.Option(
        None, "--out", help="output .png/.tif (default outputs/<name>_<to>.png or .tif)"
    ),
    resize: int = typer.Option(
        None,
        "--resize",
        help="resample the input to N² first (e.g. 256 for the authors' 4× display copy lr.jpg)",
    ),
    region: str = _REGION,
    checkpoint: str = _CKPT,
    config: str = _CONFIG,
    t0: int = _T0,
    stride: int = _STRIDE,
    guidance_w: float = _W,
    fd_step: float = _H,
    newton_lr: float = _LR,
    inner_steps: int = typer.Option(5, "--inner-steps", help="Newton iterations per step (SR notebook: 5)"),
    tile_batch: int = _TILE_BATCH,
    colab_update: bool = _COLAB,
    no_postprocess: bool = _NO_POST,
    post_t0: int = _POST_T0,
    post_stride: int = _POST_STRIDE,
    post_guidance_w: float = _POST_W,
    post_window: int = _POST_WINDOW,
    post_window_stride: int = _POST_WSTRIDE,
    post_interp: str = _POST_INTERP,
    window_batch: int = _WINDOW_BATCH,
    post_live_weights: bool = _POST_LIVE,
    decode_batch: int = _DECODE_BATCH,
    inversion_steps: int = _INV_STEPS,
    inversion_lr: float = _INV_LR,
    sim_weight: float = _SIM,
    seed: int = _SEED,
    device: str = _DEVICE,
    dtype: str = _DTYPE,
    live: bool = _LIVE,
    optimize: bool | None = OPTIMIZE_OPTION,
    compile: str | None = COMPILE_OPTION,
    no_resume: bool = _NO_RESUME,
    compression: str = _COMPRESSION,
) -> None:
    """Super-resolve a low-magnification image (e.g. 5x → 20x) by condition inversion + constrained sampling."""
    from ..errors import ZoomLDMError
    from ..sampling.inversion import InversionConfig
    from ..sampling.joint import plan_large_image
    from ..sampling.superres import SRConfig, load_lr_image, super_resolve

    if not lr_image.is_file():
        raise ZoomLDMError(f"file not found: {lr_image}")
    image = load_lr_image(lr_image, resize)
    regions = _parse_region(region)
    device = resolve_device(device)
    ckpt, pipe = _load(checkpoint, config, live, device, dtype)
    size = pipe.config.image_size
    if image.shape[0] % size or image.shape[1] % size:
        raise ZoomLDMError(
            f"{lr_image.name} is {image.shape[1]}×{image.shape[0]}; the input must be a whole number of {size}² "
            f"patches at {source} (use --resize, e.g. --resize {size} for one patch)"
        )
    plan = plan_large_image(pipe, source, target, region=regions, guide_shape=image.shape[:2])
    sr, post, decode = _configs(
        SRConfig,
        t0,
        stride,
        guidance_w,
        fd_step,
        newton_lr,
        inner_steps,
        tile_batch,
        colab_update,
        no_postprocess,
        post_t0,
        post_stride,
        post_guidance_w,
        post_window,
        post_window_stride,
        post_interp,
        window_batch,
        post_live_weights,
        decode_batch,
        pipe,
    )
    inversion = InversionConfig(steps=inversion_steps, lr=inversion_lr, sim_weight=sim_weight)
    out = out or _default_out(f"{lr_image.stem}_{plan.target.key}_seed{seed}", max(plan.height, plan.width))
    live_unet = _live_unet(ckpt, config, device, dtype) if post_live_weights else None
    apply_speed_settings(pipe, optimize, compile, unet=live_unet)
    result = super_resolve(
        pipe,
        image,
        plan.guide,
        to_magnification=plan.target,
        config=sr,
        inversion=inversion,
        postprocess=post if post is not None else False,
        decode=decode,
        seed=seed,
        out=out,
        region=regions,
        live_unet=live_unet,
        compression=compression,
        resume=not no_resume,
    )
    _report(result)
