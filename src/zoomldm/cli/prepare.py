"""``zoomldm prepare``: slides or large images → a multi-scale training store (a thin layer over
:func:`zoomldm.data.prepare.prepare_dataset`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

DEFAULT_CHECKPOINT = {"pathology": "brca", "satellite": "naip"}


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare)


def prepare(
    slides_dir: Path = typer.Argument(..., help="folder of slides / large images (searched recursively)"),
    store: str = typer.Argument(..., help="output zarr store: a path or an fsspec URL (s3://…, gs://…)"),
    domain: str = typer.Option(
        "pathology", "--domain", help="pathology (8 levels, 20x = 0.5 µm/px) or satellite (4)"
    ),
    levels: str = typer.Option(None, "--levels", help="levels to make: '0-3', '20x,5x,1.25x' (default: all)"),
    encoder: str = typer.Option(
        None, "--encoder", help="uni, dinov2_vitl14_reg or timm:<name> (default by domain)"
    ),
    encoder_weights: str = typer.Option(
        None, "--encoder-weights", help="local weights file, or 'random' (tests)"
    ),
    encoder_option: list[str] = typer.Option(
        None, "--encoder-option", help="timm kwarg KEY=VALUE (repeatable)"
    ),
    checkpoint: str = typer.Option(
        None,
        "--checkpoint",
        help="VQ source: our model dir, an official .ckpt or a "
        "hub id (default: the published brca / naip weights)",
    ),
    config: str = typer.Option(
        None,
        "--config",
        "-c",
        help="preset or yaml for an official --checkpoint; "
        "without --checkpoint: random weights of that architecture (tests only)",
    ),
    slides_csv: Path = typer.Option(
        None, "--slides", help="CSV with columns path[, id][, mpp] instead of a folder scan"
    ),
    mpp: float = typer.Option(None, "--mpp", help="level-0 µm/px (satellite: m/px) for files without it"),
    base_mpp: float = typer.Option(
        None, "--base-mpp", help="base resolution (default 0.5 µm/px; satellite: native)"
    ),
    tissue_threshold: str = typer.Option(
        None,
        "--tissue-threshold",
        help="min tissue / valid-data fraction of a "
        "region: one value or one per level (default 0.5; satellite 0.95)",
    ),
    resampling: str = typer.Option(
        "lanczos", "--resampling", help="antialiased filter: lanczos, box, bicubic, …"
    ),
    save_jpeg: bool = typer.Option(False, "--save-jpeg", help="also store each 256² sample as JPEG"),
    jpeg_quality: int = typer.Option(90, "--jpeg-quality"),
    workers: int = typer.Option(1, "--workers", help="slides processed in parallel by worker processes"),
    batch_size: int = typer.Option(32, "--batch-size", help="tiles per encoder / VQ batch"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda (each rank uses cuda:LOCAL_RANK)"),
    dtype: str = typer.Option(
        "float32", "--dtype", help="autocast dtype of both encoders: float32, bfloat16, float16"
    ),
    seed: int = typer.Option(0, "--seed", help="seed of random weights (--config without --checkpoint)"),
    strict: bool = typer.Option(False, "--strict", help="exit with status 1 when any slide failed"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Prepare a multi-scale dataset: latents + unpooled SSL grids per magnification, resumable, in parallel.

    Rerun the same command to resume after a crash. To shard the slides over GPUs or nodes, run it under
    `torchrun --no-python ... zoomldm prepare ...` or `accelerate launch --no_python zoomldm prepare ...`;
    the store must then be on shared storage.
    """
    import torch

    from ..data.encoders import DOMAIN_ENCODERS, build_encoder
    from ..data.prepare import PrepareSettings, find_slides, prepare_dataset, settings_path
    from ..errors import ZoomLDMError
    from .core import resolve_rank_device

    if domain not in DOMAIN_ENCODERS:
        raise ZoomLDMError(f"unknown domain {domain!r}; expected pathology or satellite")
    autocast = {"float32": None, "bfloat16": "bfloat16", "float16": "float16"}
    if dtype not in autocast:
        raise ZoomLDMError(f"unknown dtype {dtype!r}; expected one of {', '.join(autocast)}")
    settings = PrepareSettings(
        domain=domain,
        levels=_parse_levels(levels),
        base_mpp=base_mpp,
        tissue_threshold=_parse_thresholds(tissue_threshold),
        resampling=resampling,
        save_jpeg=save_jpeg,
        jpeg_quality=jpeg_quality,
        batch_size=batch_size,
        workers=workers,
        mpp=mpp,
        vae_dtype=autocast[dtype],
    )
    settings.validate()
    sources = find_slides(slides_dir, slides_csv, mpp)
    device = resolve_rank_device(device)

    name = encoder or DOMAIN_ENCODERS[domain]
    enc = build_encoder(
        name,
        weights=encoder_weights,
        device=device,
        dtype=getattr(torch, autocast[dtype]) if autocast[dtype] else None,
        **dict(parse_option(o) for o in encoder_option or []),
    )
    vae, vae_info = _load_vae(checkpoint, config, domain, device, seed, enc.dim)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    prefix = f"[rank {os.environ.get('RANK', '0')}] " if world > 1 else ""
    report = prepare_dataset(
        sources,
        store,
        enc,
        vae,
        settings,
        vae_info=vae_info,
        progress=progress,
        log=lambda line: typer.echo(prefix + line),
    )

    if report.rank == 0:
        typer.echo(
            f"{store}: "
            + ", ".join(f"{k} {v}" for k, v in report.totals.items())
            + f" samples from {sum(s.status in ('committed', 'done') for s in report.slides)} slides "
            f"({report.seconds:.0f} s); settings and report in {settings_path(store)}"
        )
    for failed in report.failed:
        typer.secho(f"failed: {failed.id} ({failed.path}): {failed.error}", fg=typer.colors.RED, err=True)
    if report.failed:
        typer.secho(f"{len(report.failed)} slide(s) failed; fix them and rerun to add them", err=True)
        if strict:
            raise typer.Exit(1)


def _load_vae(checkpoint: str | None, config: str | None, domain: str, device: str, seed: int, ssl_dim: int):
    """The VQ autoencoder from a checkpoint (via the pipeline) or random weights of a config."""
    from ..pipeline import ZoomLDMPipeline

    if checkpoint is None and config is not None:
        typer.secho(f"VQ autoencoder: random weights of config {config!r} (for tests only)", err=True)
        pipe = ZoomLDMPipeline.from_config(config, seed=seed)
    else:
        pipe = ZoomLDMPipeline.from_pretrained(checkpoint or DEFAULT_CHECKPOINT[domain], config=config)
    if pipe.config.ssl_channels != ssl_dim:
        typer.secho(
            f"note: the encoder gives {ssl_dim}-d embeddings; this checkpoint's summarizer expects "
            f"{pipe.config.ssl_channels} (fine for training a new model, not for fine-tuning it)",
            err=True,
        )
    return pipe.vae.to(device).eval(), {
        "source": checkpoint or f"random ({config}, seed {seed})",
        **pipe.provenance,
    }


def _parse_levels(text: str | None) -> tuple[str | int, ...] | None:
    if not text:
        return None
    if "-" in text and "," not in text:
        lo, hi = text.split("-", 1)
        if lo.strip().isdigit() and hi.strip().isdigit():
            return tuple(range(int(lo), int(hi) + 1))
    return tuple(int(p) if p.strip().isdigit() else p.strip() for p in text.split(",") if p.strip())


def _parse_thresholds(text: str | None) -> float | tuple[float, ...] | None:
    from ..errors import ZoomLDMError

    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ZoomLDMError(f"--tissue-threshold expects numbers in [0, 1], got {text!r}") from None
    return values[0] if len(values) == 1 else values


def parse_option(text: str) -> tuple[str, object]:
    from ..errors import ZoomLDMError

    if "=" not in text:
        raise ZoomLDMError(f"--encoder-option expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    for cast in (int, float):
        try:
            return key.strip(), cast(value)
        except ValueError:
            pass
    lowered = value.strip().lower()
    return key.strip(), {"true": True, "false": False}.get(lowered, value.strip())
