"""``zoomldm prepare``: slides or large images → a multi-scale training store (option parsing and printing
around :func:`zoomldm.prepare`, i.e. :func:`zoomldm.data.prepare.prepare`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

#: exit status of ``prepare`` and ``features`` when the run finished but some slides failed (documented in
#: their --help, docs/data.md and docs/mil.md); 2 stays "bad options or inputs, nothing done"
EXIT_SOME_FAILED = 3


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
        None,
        "--encoder",
        help="uni, dinov2_vitl14_reg, timm:<name> or embedded (default: the domain's; with --config and no "
        "--checkpoint: a random timm ViT of the model's SSL width)",
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
        help="VQ source: our model dir, an official .ckpt, a hub id, or embedded (the offline model, with "
        "its own encoder) (default: $ZOOMLDM_CHECKPOINT, else the published brca / naip weights)",
    ),
    config: str = typer.Option(
        None,
        "--config",
        "-c",
        help="preset or yaml for an official --checkpoint; without --checkpoint: random weights of that "
        "architecture and (without --encoder) a random encoder of its SSL width (tests and demos)",
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
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Prepare a multi-scale dataset: latents + unpooled SSL grids per magnification, resumable, in parallel.

    Rerun the same command to resume after a crash. To shard the slides over GPUs or nodes, run it under
    `torchrun --no-python ... zoomldm prepare ...` or `accelerate launch --no_python zoomldm prepare ...`;
    the store must then be on shared storage.

    Exit status: 0 all slides done; 2 bad options or inputs (nothing done); 3 finished, but some slides
    failed (each is named with its reason, also in STORE.prepare.json; rerun to retry only those).
    """
    from ..data.prepare import prepare as run_prepare
    from ..data.prepare import settings_path

    world = int(os.environ.get("WORLD_SIZE", "1"))
    prefix = f"[rank {os.environ.get('RANK', '0')}] " if world > 1 else ""

    def log(line: str) -> None:
        typer.echo(prefix + line, err=line.startswith("note:"))  # notes to stderr, slide lines to stdout

    report = run_prepare(
        slides_dir,
        store,
        domain=domain,
        levels=_parse_levels(levels),
        encoder=encoder,  # None: the model's own (data.loading.encoder_for_model)
        encoder_weights=encoder_weights,
        encoder_options=dict(parse_option(o) for o in encoder_option or []),
        checkpoint=checkpoint,
        config=config,
        slides_csv=slides_csv,
        mpp=mpp,
        base_mpp=base_mpp,
        tissue_threshold=_parse_thresholds(tissue_threshold),
        resampling=resampling,
        save_jpeg=save_jpeg,
        jpeg_quality=jpeg_quality,
        workers=workers,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        seed=seed,
        progress=progress,
        log=log,
    )
    if report.rank == 0:
        typer.echo(
            f"{store}: "
            + ", ".join(f"{k} {v}" for k, v in report.totals.items())
            + f" samples from {sum(s.status in ('committed', 'done') for s in report.slides)} slides "
            f"({report.seconds:.0f} s); settings and report in {settings_path(store)}"
        )
    exit_if_failed(report.failed, "fix or remove them and rerun the same command: only they are retried")


def exit_if_failed(failed: list, advice: str) -> None:
    """Name each failed slide with its reason, then exit with :data:`EXIT_SOME_FAILED` (when any)."""
    for slide in failed:
        typer.secho(f"failed: {slide.id} ({slide.path}): {slide.error}", fg=typer.colors.RED, err=True)
    if failed:
        typer.secho(f"{len(failed)} slide(s) failed; {advice}", err=True)
        raise typer.Exit(EXIT_SOME_FAILED)


def _parse_levels(text: str | None) -> tuple[str | int, ...] | None:
    if not text:
        return None

    # a level index is 1-2 ASCII digits: int() refuses "²" (which isdigit() accepts), and "0-99999999999"
    # would build a huge range; anything else stays a name for settings.validate() to refuse
    def index(p: str) -> bool:
        return p.isascii() and p.isdigit() and len(p) <= 2

    if "-" in text and "," not in text:
        lo, hi = (p.strip() for p in text.split("-", 1))
        if index(lo) and index(hi):
            return tuple(range(int(lo), int(hi) + 1))
    return tuple(int(p.strip()) if index(p.strip()) else p.strip() for p in text.split(",") if p.strip())


def _parse_thresholds(text: str | None) -> float | tuple[float, ...] | None:
    from ..errors import ZoomLDMError, quoted

    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ZoomLDMError(f"--tissue-threshold expects numbers in [0, 1], got {quoted(text)}") from None
    if not all(0 <= v <= 1 for v in values):  # also refuses NaN (every comparison with NaN is false)
        raise ZoomLDMError(f"--tissue-threshold expects numbers in [0, 1], got {quoted(text)}")
    return values[0] if len(values) == 1 else values


def parse_option(text: str) -> tuple[str, object]:
    from ..errors import ZoomLDMError, quoted

    if "=" not in text:
        raise ZoomLDMError(f"--encoder-option expects KEY=VALUE, got {quoted(text)}")
    key, value = text.split("=", 1)
    for cast in (int, float):
        try:
            return key.strip(), cast(value)
        except ValueError:
            pass
    lowered = value.strip().lower()
    return key.strip(), {"true": True, "false": False}.get(lowered, value.strip())
