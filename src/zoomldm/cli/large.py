"""Large images: ``zoomldm generate`` (joint multi-scale sampling) and ``zoomldm superres``.

Both are thin layers over :meth:`ZoomLDMPipeline.generate_large` and :meth:`ZoomLDMPipeline.super_resolve`:
they parse the options, load the model, call the method (the settings go by the same names,
:data:`zoomldm.sampling.settings.OPTIONS`) and print. Every hyper-parameter has the official value as default.
The output is a PNG up to 2048² pixels and a pyramidal TIFF (written tile by tile) above, unless ``--out``
names the file; ``<stem>_guide.png`` and ``<stem>.json`` (metrics, settings) are written beside it.

Before the model is loaded, both commands plan the run from the model's configuration
(:func:`zoomldm.sampling.plan.plan_large`): ``--dry-run`` prints the plan (cascade, tiles, blocks, UNet
rows, VQ passes, disk, peak host and GPU memory, time) and exits; without it the plan's lower bounds are
checked, so a run that would not fit on the disk or in memory is refused in one line. ``--schedule
official|fast`` picks a preset of outer steps and Newton iterations
(:data:`zoomldm.sampling.settings.SCHEDULES`); ``--stride`` / ``--inner-steps`` given override it.

The options both commands share, and what they build from them, are :mod:`.large_options`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .large_options import (
    LargeImageOptions,
    _checkpoint,
    _parse_tile_batch,  # noqa: F401 (its home was this module)
    with_large_image_options,
)

PNG_MAX_SIDE = 2048

# -- options of one command only, or used at a different place in each command's --help --
_TARGET = typer.Option(
    None, "--target", "--to", help="output magnification (default: the base level, 20x / 1x)"
)
_REGION = typer.Option(
    None, "--region", help="X,Y,W,H in output pixels (multiples of 256): generate only there"
)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("superres")(superres)


def _parse_region(text: str | None) -> tuple[int, int, int, int] | None:
    from ..errors import ConfigError, quoted

    if text is None:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--region must be X,Y,W,H in pixels; got {quoted(text)}") from None
    return x, y, w, h


def _default_out(name: str, side: int) -> Path:
    return Path("outputs") / f"{name}.{'png' if side <= PNG_MAX_SIDE else 'tif'}"


def _reference_guide(opts: LargeImageOptions, reference: Path | None, target: str | None, size: int | None):
    """The guide a reference file implies when neither --guide nor --size is given (for the plan)."""
    if reference is None or size is not None:
        return None
    from ..sampling.plan import guide_for_reference

    found = guide_for_reference(_checkpoint(opts), reference, target, opts.config)
    return None if found is None else found.name


def _planned_out(opts, guide, target, size, regions) -> Path:
    """The default output name of ``generate`` (as chosen after loading, from the configuration only)."""
    if guide is None and size is None:
        return Path("outputs") / f"large_seed{opts.seed}.tif"
    from ..sampling.plan import plan_geometry

    stages = plan_geometry(
        _checkpoint(opts), opts.config, guide=guide, target=target, size=size, region=regions
    )
    name = f"large_{stages[0].guide.key}_{stages[-1].target.key}_seed{opts.seed}"
    return _default_out(name, max(stages[-1].height, stages[-1].width))


def _whole_patches(opts: LargeImageOptions, shape: tuple[int, ...]) -> bool:
    from ..sampling.plan import model_spec

    tile = model_spec(_checkpoint(opts), opts.config).config.image_size
    return not (shape[0] % tile or shape[1] % tile)


def _planned_sr_out(opts: LargeImageOptions, lr_image: Path, request: dict[str, Any]) -> Path:
    """The default output name of ``superres`` (as chosen after loading, from the configuration only)."""
    from ..sampling.plan import plan_geometry

    (stage,) = plan_geometry(_checkpoint(opts), opts.config, command="superres", **request)
    return _default_out(f"{lr_image.stem}_{stage.target.key}_seed{opts.seed}", max(stage.height, stage.width))


def _report(result) -> None:
    m = result.metrics
    where = result.path or "memory"
    width, height = result.settings["region_px"][2:]
    typer.echo(
        f"wrote {where} ({width}×{height}); constraint vs guide: "
        f"PSNR {m['output']['psnr']:.2f} dB, MAE {m['output']['mae']:.2f} (tiles before post-processing: "
        f"{m['tiles']['psnr']:.2f} dB); {m['seconds']['total']:.0f} s"
    )


@with_large_image_options(10, "Newton iterations per step (official 10)")
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
        None,
        "--out",
        help="output .tif/.ome.tif/.png (default outputs/large_<guide>_<to>_seed<N>.png or .tif; "
        "outputs/large_seed<N>.tif when the guide is taken from the reference)",
    ),
    cdm: Path = typer.Option(
        None, "--cdm", help="CDM for reference-free generation (default: the one the model ships, if any)"
    ),
    encoder: str = typer.Option(
        None,
        "--encoder",
        help="SSL encoder for an image --reference (uni, dinov2, timm:<name>, embedded; default: the "
        "model's own: embedded for the embedded model, else uni)",
    ),
    encoder_weights: str = typer.Option(
        None, "--encoder-weights", help="local encoder weights ('random': tests)"
    ),
    opts: LargeImageOptions = None,
) -> None:
    """Generate a large image (e.g. 4096² at 20x) jointly with a low-magnification guide (SPEC §4)."""
    from ..fsutil import check_input, check_output
    from ..sampling.joint import plan_stages
    from ..sampling.levels import parse_level

    # missing / empty inputs and unwritable outputs: refused before loading the model
    if reference is not None:
        check_input(reference, "--reference")
    if out is not None:
        check_output(out, "--out", overwrite=opts.overwrite)
    regions = _parse_region(region)
    opts.plan(
        "generate",
        out or _planned_out(opts, guide, target, size, regions),
        guide=guide or _reference_guide(opts, reference, target, size),
        target=target,
        size=size,
        region=regions,
        reference_free=reference is None,  # the CDM given, or the model's own (known once loaded)
    )
    ckpt, pipe = opts.load()
    gmag = parse_level(pipe, guide, "--guide") if guide is not None else None  # parsed once, here
    tmag = parse_level(pipe, target, "--to") if target is not None else None
    if out is None and (gmag is not None or size is not None):
        stages = plan_stages(pipe, gmag, tmag, size, regions)
        name = f"large_{stages[0].guide.key}_{stages[-1].target.key}_seed{opts.seed}"
        out = _default_out(name, max(stages[-1].height, stages[-1].width))
    result = pipe.generate_large(
        reference=reference,
        cdm=cdm,
        guide=gmag,
        target=tmag,
        size=size,
        region=regions,
        out=out or Path("outputs") / f"large_seed{opts.seed}.tif",
        encoder=encoder,
        encoder_weights=encoder_weights,
        live_unet=opts.live_unet_and_speed(ckpt, pipe),
        **opts.sampling_options(),
    )
    _report(result)


@with_large_image_options(5, "Newton iterations per step (SR notebook: 5)")
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
    opts: LargeImageOptions = None,
) -> None:
    """Super-resolve a low-magnification image (e.g. 5x → 20x) by condition inversion + constrained sampling."""
    from ..fsutil import check_output
    from ..io.geotiff import has_georeference, read_rgb
    from ..sampling.joint import plan_large_image
    from ..sampling.levels import parse_level
    from ..sampling.superres import load_lr_image

    if has_georeference(lr_image):  # GeoTIFF: rasterio (bands, dtype, nodata), as pipe.super_resolve reads it
        image = read_rgb(lr_image, quiet=True)[0]
    else:
        image = load_lr_image(
            lr_image, resize
        )  # a missing or damaged file is refused before loading the model
    if out is not None:
        check_output(out, "--out", overwrite=opts.overwrite)
    regions = _parse_region(region)
    request = dict(input_shape=image.shape[:2], from_magnification=source, target=target, region=regions)
    if _whole_patches(opts, image.shape[:2]):  # else super_resolve names the file and what is wrong
        opts.plan("superres", out or _planned_sr_out(opts, lr_image, request), **request)
    ckpt, pipe = opts.load()
    source = parse_level(pipe, source, "--from")  # parsed once, here
    tmag = parse_level(pipe, target, "--to") if target is not None else None
    if out is None:  # the default name needs the output size: .png up to 2048², else .tif
        tile = pipe.config.image_size
        whole = not (image.shape[0] % tile or image.shape[1] % tile)  # else super_resolve says what is wrong
        plan = (
            plan_large_image(pipe, source, tmag, region=regions, guide_shape=image.shape[:2])
            if whole
            else None
        )
        side = max(plan.height, plan.width) if plan else 0
        out = _default_out(f"{lr_image.stem}_{(tmag or pipe.scales[0]).key}_seed{opts.seed}", side)
    result = pipe.super_resolve(
        lr_image,  # read (again) by the method, so that its messages name the file
        source,
        tmag,
        resize=resize,
        out=out,
        region=regions,
        live_unet=opts.live_unet_and_speed(ckpt, pipe),
        **opts.sampling_options(),
    )
    _report(result)
