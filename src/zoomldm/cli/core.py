"""Core commands: ``convert``, ``sample`` and ``demo`` (the README's main job)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..checkpoints import CHECKPOINT_ENV, EMBEDDED, default_checkpoint
from ..checkpoints import PUBLISHED as DEFAULT_CHECKPOINT
from ..devices import apply_speed_settings, resolve_device, resolve_rank_device  # noqa: F401 (re-exported)

#: what ``--checkpoint`` omitted means, for every model command's help
DEFAULT_RULE = (
    f"default: ${CHECKPOINT_ENV}, else {DEFAULT_CHECKPOINT} when cached or reachable, else the embedded "
    f"offline model; '{EMBEDDED}' names that one, 'embedded-naip' the embedded aerial model"
)


#: ``--optimize/--no-optimize`` and ``--compile``, shared by every sampling command
OPTIMIZE_OPTION = typer.Option(
    None,
    "--optimize/--no-optimize",
    help="fused QKV + channels-last networks (same arithmetic, other rounding); default: on for CUDA only",
)
COMPILE_OPTION = typer.Option(
    None,
    "--compile",
    help="torch.compile the UNet and VQ (default, max-autotune, reduce-overhead); pays off on long GPU runs",
)


def register(app: typer.Typer) -> None:
    app.command("convert")(convert)
    app.command("sample")(sample)
    app.command("demo")(demo)


def convert(
    checkpoint: Path = typer.Argument(..., help="official CompVis-format checkpoint (.ckpt / .safetensors)"),
    out_dir: Path = typer.Argument(..., help="output directory in our format (safetensors + config)"),
    config: str = typer.Option(
        None,
        "--config",
        "-c",
        help="preset (brca, naip) or the authors' yaml; default: "
        "config.yaml beside the checkpoint, else recognised from the weights",
    ),
    live: bool = typer.Option(False, "--live", help="keep the live UNet weights instead of the EMA ones"),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="replace an existing OUT_DIR that is not a zoomldm model (its files are lost)",
    ),
) -> None:
    """Convert an official checkpoint into our format (loads without conversion afterwards).

    An existing converted model in OUT_DIR is replaced (by renames, never half-written); any other existing
    folder is refused unless --overwrite is given, so a mistyped OUT_DIR never deletes unrelated files."""
    from ..checkpoints import file_sha256
    from ..errors import OutputError
    from ..fsutil import check_output
    from ..pipeline import ZoomLDMPipeline

    check_output(out_dir, "OUT_DIR", kind="dir")
    if (
        out_dir.is_dir()
        and any(out_dir.iterdir())
        and not (out_dir / "zoomldm.json").is_file()
        and not overwrite
    ):
        raise OutputError(
            f"OUT_DIR {out_dir}: exists and is not a zoomldm model; pass --overwrite to replace it "
            "(its files are deleted), or choose another OUT_DIR"
        )
    pipe = ZoomLDMPipeline.from_official(checkpoint, config=config, ema=not live)
    pipe.save_pretrained(out_dir, extra={"converted_from_sha256": file_sha256(checkpoint)})
    typer.echo(
        f"wrote {out_dir} ({pipe.config.preset or 'yaml'} architecture, {'live' if live else 'EMA'} UNet)"
    )


def sample(
    checkpoint: str = typer.Option(
        None,
        "--checkpoint",
        help=f"our format dir, an official file, a hub id, or {EMBEDDED} ({DEFAULT_RULE})",
    ),
    config: str = typer.Option(None, "--config", "-c", help="preset or yaml for an official checkpoint"),
    magnification: str = typer.Option(
        ..., "--magnification", "-m", help="e.g. 20x, 5x, 2.5x, 1.25x (2_5x also accepted)"
    ),
    ssl: Path = typer.Option(None, "--ssl", help="SSL embedding grid (.npy/.pt/.safetensors, C×h×w)"),
    reference: Path = typer.Option(
        None,
        "--reference",
        help="reference image region at base resolution; its 256² tiles are embedded by --encoder",
    ),
    unconditional: bool = typer.Option(
        False,
        "--unconditional",
        help="no reference: conditioning tokens sampled by the CDM (--cdm, default the model's own)",
    ),
    cdm: Path = typer.Option(
        None,
        "--cdm",
        help="CDM checkpoint (ours, a train-cdm step dir, or the authors' DiT file); default: the one the "
        "model ships (the embedded model's)",
    ),
    cdm_steps: int = typer.Option(200, "--cdm-steps", help="DDIM steps of the CDM (authors: 200)"),
    encoder: str = typer.Option(
        None,
        "--encoder",
        help="SSL encoder for --reference (uni, dinov2, timm:<name>; default: the model's: uni, or the "
        "embedded model's own)",
    ),
    encoder_weights: str = typer.Option(
        None,
        "--encoder-weights",
        help="local weights file for --encoder ('random' keeps random weights: smoke tests only)",
    ),
    n: int = typer.Option(4, "--n", help="number of patches"),
    steps: int = typer.Option(50, "--steps", help="denoising steps"),
    guidance: float = typer.Option(
        2.0, "--guidance", help="s in e_u + s(e_c − e_u); 1 = none; the authors use 2"
    ),
    scheduler: str = typer.Option("ddim", "--scheduler", help="ddim, plms or dpm++"),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(16, "--batch-size"),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda, cuda:1, …"),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16"),
    live: bool = typer.Option(False, "--live", help="use the live UNet weights of an official checkpoint"),
    optimize: bool | None = OPTIMIZE_OPTION,
    compile: str | None = COMPILE_OPTION,
    out: Path = typer.Option(Path("outputs/samples"), "--out", help="output directory"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace the patches of an earlier run in --out (refused by default)"
    ),
) -> None:
    """Generate N patches at a magnification, conditioned on SSL embeddings or a reference image."""
    from ..conditioning import load_ssl_grid
    from ..errors import OutputError, ZoomLDMError
    from ..fsutil import check_output
    from ..io.images import load_image
    from ..pipeline import ZoomLDMPipeline

    if sum(x is not None and x is not False for x in (ssl, reference, unconditional or None)) != 1:
        raise ZoomLDMError("give exactly one of --ssl FILE, --reference IMAGE or --unconditional --cdm CKPT")
    for path in (
        ssl,
        reference,
        cdm,
        Path(encoder_weights) if encoder_weights not in (None, "random") else None,
    ):
        if path is not None and not path.exists():
            raise ZoomLDMError(f"file not found: {path}")
    for value, option in ((n, "--n"), (batch_size, "--batch-size")):
        if value < 1:
            raise ZoomLDMError(f"{option} {value}: must be at least 1")
    # the output is checked before the (slow) model loading and sampling, so a bad --out fails fast
    check_output(out, "--out", kind="dir")
    if not overwrite and out.is_dir() and any(out.glob("patch_*.png")):
        raise OutputError(
            f"--out {out}: holds the patches of an earlier run; pass --overwrite to replace them, "
            "or choose another --out"
        )
    # the reference is decoded before the (slow) model loading, so damaged pixel data fails fast
    image = load_image(reference, "reference image") if reference is not None else None
    device = resolve_device(device)
    checkpoint = model_checkpoint(checkpoint)
    pipe = ZoomLDMPipeline.from_pretrained(
        checkpoint, config=config, ema=not live, device=device, dtype=dtype
    )
    apply_speed_settings(pipe, optimize, compile)
    mag = pipe.magnification(magnification)
    if unconditional:
        cdm = cdm or pipe.cdm_dir  # the model's own CDM (the embedded model ships one)
        if cdm is None:
            raise ZoomLDMError(
                "--unconditional needs the Conditioning Diffusion Model: --cdm CHECKPOINT (this model "
                "ships none)"
            )
        _write_patches(
            out, _sample_unconditional(pipe, cdm, mag, n, steps, guidance, scheduler, cdm_steps, seed, device)
        )
        return
    if ssl is not None:
        grid = load_ssl_grid(ssl, channels=pipe.config.ssl_channels)
    else:
        from ..sampling.reference import default_encoder

        grid = _embed_reference(
            reference,
            image,
            encoder or default_encoder(pipe),
            encoder_weights,
            device,
            pipe.config.ssl_channels,
        )
    result = pipe(
        ssl=grid,
        magnification=mag,
        num_images=n,
        num_inference_steps=steps,
        guidance_scale=guidance,
        scheduler=scheduler,
        seed=seed,
        batch_size=batch_size,
    )
    _write_patches(out, result)


def _embed_reference(path: Path, image, encoder, weights: str | None, device: str, channels: int):
    """The SSL grid of the reference region ``image`` (uint8 HWC, read from ``path`` by
    :func:`~zoomldm.io.images.load_image`), embedded tile by tile; non-finite embeddings name ``path``."""
    from ..errors import InputError, ZoomLDMError
    from ..models.encoders import encode_region_grid
    from ..sampling.reference import build_ssl_encoder

    if image.shape[0] % 256 or image.shape[1] % 256:
        raise ZoomLDMError(
            f"{path.name} is {image.shape[1]}×{image.shape[0]}; a reference region must be a "
            "multiple of 256 px at base resolution (one embedding per 256² tile)"
        )
    enc = build_ssl_encoder(encoder, weights, device, channels)  # the rule of generate --reference too
    try:
        return encode_region_grid(enc, image).cpu()
    except InputError as err:  # e.g. non-finite embeddings: say which image they came from
        raise InputError(f"{path}: {err}") from err


def _sample_unconditional(pipe, cdm_path, mag, n, steps, guidance, scheduler, cdm_steps, seed, device):
    """CDM tokens for ``mag`` → the UNet (the authors' ``cdm_measure_fid.py`` path, SPEC §6)."""
    from ..evaluation.generators import cdm_patch_generator
    from ..models.cdm import load_cdm
    from ..pipeline import PatchSamplingOutput

    model, info = load_cdm(cdm_path)
    generate = cdm_patch_generator(
        pipe,
        model.to(device),
        mag,
        num_inference_steps=steps,
        guidance_scale=guidance,
        scheduler=scheduler,
        cdm_steps=cdm_steps,
        seed=seed,
    )
    settings = {
        "magnification": mag.name,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "scheduler": scheduler,
        "seed": seed,
        "conditions": f"CDM {cdm_path} ({info.get('source')})",
        "cdm_steps": cdm_steps,
        **pipe.provenance,
    }
    return PatchSamplingOutput(generate(0, n), None, settings)


def _write_patches(out: Path, result) -> None:
    from ..io.images import contact_sheet, save_png

    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(result.images):
        save_png(out / f"patch_{i:04d}.png", image, dict(result.settings, index=i))
    save_png(
        out / "contact_sheet.png",
        contact_sheet(list(result.images), ncols=min(8, len(result.images))),
        result.settings,
    )
    typer.echo(f"wrote {len(result.images)} patches and contact_sheet.png to {out}")


def demo(
    checkpoint: str = typer.Option(None, "--checkpoint", help=DEFAULT_RULE),
    out: Path = typer.Option(Path("outputs/demo"), "--out"),
    steps: int = typer.Option(None, "--steps", help="default 50 (10 for a random stand-in model)"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda, cuda:1, …"),
    domain: str = typer.Option(
        "pathology",
        "--domain",
        help="pathology (default: H&E, 8 levels) or satellite (aerial, 4 levels; embedded-naip offline)",
    ),
) -> None:
    """The main job: patches at every magnification from a real image's embeddings, then a large image.

    With the published checkpoint unreachable (offline) and no --checkpoint given, it says so in one line
    and runs the same pipeline on the package's embedded small model (trained on one H&E image; see
    zoomldm/assets/tiny_brca/MODEL_CARD.md). A --checkpoint that cannot be loaded is an error (exit 2).
    """
    if domain == "satellite":  # patches at 4 levels, a large image at 1x, a real Sentinel-2 super-resolution
        from ..demo_satellite import run_satellite_demo

        run_satellite_demo(checkpoint, out, steps=steps, seed=seed, device=resolve_device(device))
        return
    if domain != "pathology":
        from ..errors import ConfigError

        raise ConfigError(f"--domain must be pathology or satellite; got {domain!r}")
    from ..demo import run_demo

    run_demo(checkpoint, out, steps=steps, seed=seed, device=resolve_device(device))


def model_checkpoint(value: str | None) -> str:
    """``--checkpoint`` of a model command by the package's one rule
    (:func:`zoomldm.checkpoints.default_checkpoint`); its one-line note goes to stderr."""
    return str(default_checkpoint(value, log=lambda line: typer.echo(line, err=True)))
