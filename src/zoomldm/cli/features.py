"""``zoomldm features``: multi-scale ZoomLDM UNet features per slide (option parsing and printing around
:func:`zoomldm.extract_features`, i.e. :func:`zoomldm.features.extract.extract_features`)."""

from __future__ import annotations

from pathlib import Path

import typer

from .core import COMPILE_OPTION, OPTIMIZE_OPTION


def register(app: typer.Typer) -> None:
    app.command("features")(features)


def features(
    slides_dir: Path = typer.Argument(..., help="folder of slides / large images (searched recursively)"),
    out: Path = typer.Argument(..., help="output folder: one <slide>.h5 per slide (TRIDENT/CLAM layout)"),
    magnifications: str = typer.Option(
        "20x,5x", "--magnifications", help="finest = the tiles; each coarser one adds its containing region"
    ),
    timestep: int = typer.Option(100, "--timestep", help="noise level t (0..999) of the latent"),
    blocks: str = typer.Option("mid,up1", "--blocks", help="UNet blocks to pool: mid, up0, up1, … (decoder)"),
    fusion: str = typer.Option("concat", "--fusion", help="how magnifications are fused: concat or mean"),
    checkpoint: str = typer.Option(
        None,
        "--checkpoint",
        help="our model dir, an official .ckpt, a hub id, brca / naip, or embedded (the offline model, with its "
        "own encoder) (default: $ZOOMLDM_CHECKPOINT, else brca; with --config: random weights)",
    ),
    config: str = typer.Option(
        None,
        "--config",
        "-c",
        help="preset or yaml for an official --checkpoint; without --checkpoint: random weights of that "
        "architecture (seeded by --seed) and a random encoder of its width, as in `prepare` (tests and demos)",
    ),
    live: bool = typer.Option(False, "--live", help="use the live UNet weights instead of the EMA ones"),
    encoder: str = typer.Option(
        None, "--encoder", help="SSL encoder for the conditions: uni, dinov2_vitl14_reg, timm:<name>"
    ),
    encoder_weights: str = typer.Option(
        None, "--encoder-weights", help="local weights file, or 'random' (tests)"
    ),
    encoder_option: list[str] = typer.Option(
        None, "--encoder-option", help="timm kwarg KEY=VALUE (repeatable)"
    ),
    slides_csv: Path = typer.Option(
        None, "--slides", help="CSV with columns path[, id][, mpp] instead of a folder scan"
    ),
    mpp: float = typer.Option(None, "--mpp", help="level-0 µm/px (satellite: m/px) for files without it"),
    base_mpp: float = typer.Option(None, "--base-mpp", help="base resolution (default 0.5 µm/px)"),
    tissue_threshold: float = typer.Option(
        None, "--tissue-threshold", help="min tissue fraction of a tile (default 0.5; satellite 0.95)"
    ),
    resampling: str = typer.Option("lanczos", "--resampling", help="antialiased filter for coarser regions"),
    batch_size: int = typer.Option(16, "--batch-size", help="regions per UNet batch"),
    workers: int = typer.Option(1, "--workers", help="slides processed in parallel by worker processes"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda (each rank uses cuda:LOCAL_RANK)"),
    dtype: str = typer.Option("float32", "--dtype", help="UNet/Summarizer dtype: float32, bfloat16, float16"),
    seed: int = typer.Option(0, "--seed", help="seed of the shared noise latent (and of random weights)"),
    optimize: bool | None = OPTIMIZE_OPTION,
    compile: str | None = COMPILE_OPTION,
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Extract ZoomLDM features of every tissue tile, fused across magnifications; resumable, parallel.

    Rerun the same command to resume; run it under `torchrun` / `accelerate launch` to shard the slides
    over ranks. Feed OUT to `zoomldm mil train`.

    Exit status: 0 all slides done; 2 bad options or inputs (nothing done); 3 finished, but some slides
    failed (each is named with its reason, also in OUT/report_rank<r>.json; rerun to retry only those).
    """
    from ..features.extract import FeatureSettings, extract_features
    from .prepare import exit_if_failed, parse_option

    settings = FeatureSettings(
        magnifications=tuple(m.strip() for m in magnifications.split(",") if m.strip()),
        timestep=timestep,
        blocks=tuple(b.strip() for b in blocks.split(",") if b.strip()),
        fusion=fusion,
        seed=seed,
        batch_size=batch_size,
        tissue_threshold=tissue_threshold,
        base_mpp=base_mpp,
        resampling=resampling,
        workers=workers,
    )

    def log(line: str) -> None:
        typer.echo(line, err=line.startswith("note:"))  # notes to stderr, per-slide lines to stdout

    report = extract_features(
        slides_dir,
        out,
        checkpoint,
        encoder,  # None: the model's own (data.loading.encoder_for_model)
        settings,
        progress=progress,
        log=log,
        config=config,
        live=live,
        encoder_weights=encoder_weights,
        encoder_options=dict(parse_option(o) for o in encoder_option or []),
        slides_csv=slides_csv,
        mpp=mpp,
        device=device,
        dtype=dtype,
        optimize=optimize,
        compile=compile,
    )
    written = [s for s in report.slides if s.status == "written"]
    typer.echo(
        f"{out}: {len(written)} slides written ({sum(s.tiles for s in written)} tiles, "
        f"{report.tiles_per_second:.1f} tiles/s), {sum(s.status == 'done' for s in report.slides)} already done"
    )
    exit_if_failed(report.failed, "fix or remove them and rerun the same command: only they are retried")
