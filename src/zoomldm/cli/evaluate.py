"""``zoomldm eval``: FID per magnification, constraint metrics, Fréchet distance of embedding sets."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..fsutil import atomic_path, check_input, check_output

eval_app = typer.Typer(
    help="Evaluate samples: FID per magnification, constraint metrics, embedding Fréchet distance.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


@eval_app.command("fid")
def fid(
    real: Path = typer.Option(
        ..., "--real", help="real patches at this magnification (folder), or a statistics .npz"
    ),
    generated: Path = typer.Option(
        None, "--generated", help="folder of generated patches (or generate them with --cdm and --checkpoint)"
    ),
    cdm: Path = typer.Option(
        None, "--cdm", help="generate unconditional samples with this CDM (train-cdm or .pt)"
    ),
    checkpoint: str = typer.Option(
        None, "--checkpoint", help="the ZoomLDM that turns CDM tokens into patches"
    ),
    config: str = typer.Option(None, "--config", help="preset or yaml for an official --checkpoint"),
    num_samples: int = typer.Option(10_000, "--num-samples", help="samples to generate (authors: 10,000)"),
    steps: int = typer.Option(50, "--steps", help="UNet steps (authors: PLMS 50)"),
    guidance: float = typer.Option(
        1.75, "--guidance", help="s in e_u + s(e_c − e_u) (authors' CDM FID: 1.75)"
    ),
    scheduler: str = typer.Option("plms", "--scheduler", help="ddim, plms or dpm++"),
    cdm_steps: int = typer.Option(200, "--cdm-steps", help="CDM DDIM steps (authors: 200)"),
    sample_batch_size: int = typer.Option(16, "--sample-batch-size"),
    seed: int = typer.Option(
        0, "--seed", help="seed of the generated samples (batch k uses seed + first index)"
    ),
    magnification: str = typer.Option(
        ..., "--magnification", "-m", help="e.g. 20x, 5x, 2.5x (2_5x accepted)"
    ),
    domain: str = typer.Option("pathology", "--domain", help="pathology or satellite (names the levels)"),
    extractor: str = typer.Option(
        "inception",
        "--extractor",
        help="inception (pytorch-fid), or a domain encoder: uni, dinov2, timm:<name>",
    ),
    inception_weights: Path = typer.Option(
        None,
        "--inception-weights",
        help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (else the hub cache)",
    ),
    encoder_weights: str = typer.Option(None, "--encoder-weights", help="weights of a domain encoder"),
    split: str = typer.Option(
        "unspecified", "--split", help="where the real patches come from, e.g. 'held-out slides' (recorded)"
    ),
    out: Path = typer.Option(Path("outputs/fid"), "--out", help="folder for fid_<mag>.json"),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="reference statistics cache (default: <out>/cache)"
    ),
    batch_size: int = typer.Option(50, "--batch-size"),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda, …"),
) -> None:
    """FID of generated vs real patches of one magnification; the record is written beside it."""
    from ..errors import ZoomLDMError
    from ..evaluation.extractors import build_extractor
    from ..evaluation.fid import fid_for_magnification
    from ..scales import scales_for

    # 1. validate every argument before loading a model or an extractor (a bad path fails in a second)
    level = scales_for(domain).parse(magnification)
    if (generated is None) == (cdm is None):
        raise ZoomLDMError(
            "give either --generated (a folder of patches) or --cdm with --checkpoint to generate them"
        )
    _check_real(real)
    if generated is not None:
        _check_images(generated, "--generated")
    if cdm is not None:
        check_input(cdm, "--cdm", kind="dir" if cdm.is_dir() else "file")
        if checkpoint is None:
            raise ZoomLDMError("--cdm needs --checkpoint: the ZoomLDM that turns its tokens into patches")
        _check_count(num_samples, "--num-samples", 2)
    for value, option in ((steps, "--steps"), (cdm_steps, "--cdm-steps"), (batch_size, "--batch-size"),
                          (sample_batch_size, "--sample-batch-size")):  # fmt: skip
        _check_count(value, option)
    _check_finite(guidance, "--guidance")
    if inception_weights is not None:
        check_input(inception_weights, "--inception-weights")
    check_output(out, "--out", kind="dir")
    if cache_dir is not None:
        check_output(cache_dir, "--cache-dir", kind="dir")

    source = generated
    if cdm is not None:
        source = _cdm_generator(
            cdm, checkpoint, config, level.name, steps, guidance, scheduler, cdm_steps, seed, device
        )
    feature_extractor = build_extractor(
        extractor,
        inception_weights=inception_weights,
        encoder_weights=encoder_weights,
        device=_device(device),
        batch_size=batch_size,
    )
    result = fid_for_magnification(
        level.name,
        real,
        source,
        feature_extractor,
        out,
        num_samples=num_samples,
        split=split,
        cache_dir=cache_dir,
        batch_size=batch_size,
        sample_batch_size=sample_batch_size,
        sample_metadata={"cdm": str(cdm), "checkpoint": str(checkpoint), "seed": seed, "steps": steps,
                         "guidance_scale": guidance, "scheduler": scheduler, "cdm_steps": cdm_steps},
    )  # fmt: skip
    typer.echo(
        f"FID {level.name}: {result.fid:.4f}  ({result.feature_extractor}; {result.num_generated} generated vs "
        f"{result.num_real} real; split: {result.split}) -> {out / ('fid_' + level.name.replace('.', '_') + '.json')}"
    )


@eval_app.command("constraint")
def constraint(
    image: Path = typer.Argument(
        ..., help="high-magnification image (PNG/JPEG/TIFF; a pyramid's first page)"
    ),
    guide: Path = typer.Argument(..., help="the guide / low-resolution input it must agree with"),
    factor: int = typer.Option(None, "--factor", help="downsampling factor (default: the size ratio)"),
    filter: str = typer.Option(
        "area", "--filter", help="area (box mean) or cubic (the joint sampler's down)"
    ),
    json_out: Path = typer.Option(None, "--json", help="also write the metrics to this JSON file"),
) -> None:
    """PSNR and MAE (8-bit levels) between the downsampled image and its guide."""
    from ..errors import InputError
    from ..evaluation.constraints import FILTERS, constraint_metrics

    if filter not in FILTERS:
        raise InputError(f"--filter {filter!r}: expected one of {', '.join(FILTERS)}")
    if factor is not None:
        _check_count(factor, "--factor")
    if json_out is not None:
        check_output(json_out, "--json")
    high, low = _read_rgb(image, "IMAGE"), _read_rgb(guide, "GUIDE")
    if factor is not None and (
        high.shape[0] % factor
        or high.shape[1] % factor
        or high.shape[:2] != tuple(factor * n for n in low.shape[:2])
    ):
        raise InputError(
            f"--factor {factor}: {image.name} is {high.shape[1]}x{high.shape[0]} and {guide.name} is "
            f"{low.shape[1]}x{low.shape[0]}; the image must be exactly factor × the guide "
            "(omit --factor to use the ratio)"
        )
    metrics = constraint_metrics(high, low, factor=factor, filter=filter)
    record = {
        "image": str(image),
        "guide": str(guide),
        "factor": factor,
        "filter": filter,
        **metrics.to_dict(),
    }
    if json_out is not None:  # replaced if it exists: the record of the same two images
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
    typer.echo(
        f"PSNR {metrics.psnr:.2f} dB  MAE {metrics.mae:.3f}  max |diff| {metrics.max_abs:.1f}  ({filter} filter)"
    )


@eval_app.command("embedding-fd")
def embedding_fd(
    a: Path = typer.Argument(..., help="embeddings [N, ...] (.npy, .pt, .safetensors with one tensor)"),
    b: Path = typer.Argument(..., help="embeddings [M, ...] of the same per-sample shape"),
) -> None:
    """Fréchet distance between two embedding sets (e.g. real Summarizer tokens vs CDM samples)."""
    from ..errors import InputError
    from ..evaluation.frechet import embedding_frechet_distance

    first, second = _read_array(a, "A"), _read_array(b, "B")
    if first.shape[1:] != second.shape[1:]:
        raise InputError(
            f"{a.name} holds {list(first.shape)} and {b.name} holds {list(second.shape)}; "
            "the per-sample shapes must match"
        )
    typer.echo(f"Fréchet distance: {embedding_frechet_distance(first, second):.6f}")


# ------------------------------------------------------------------------------------------------
def _cdm_generator(
    cdm, checkpoint, config, magnification, steps, guidance, scheduler, cdm_steps, seed, device
):
    from ..errors import ZoomLDMError
    from ..evaluation.generators import cdm_patch_generator
    from ..models.cdm import load_cdm
    from ..pipeline import ZoomLDMPipeline

    if checkpoint is None:
        raise ZoomLDMError("--cdm needs --checkpoint: the ZoomLDM that turns its tokens into patches")
    dev = _device(device)
    pipe = ZoomLDMPipeline.from_pretrained(checkpoint, config, device=dev)
    model = load_cdm(cdm)[0].to(dev)
    return cdm_patch_generator(
        pipe, model, magnification, num_inference_steps=steps, guidance_scale=guidance, scheduler=scheduler,
        cdm_steps=cdm_steps, seed=seed,
    )  # fmt: skip


def _device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _check_count(value: int, option: str, minimum: int = 1) -> None:
    from ..errors import InputError

    if value < minimum:
        raise InputError(f"{option} must be at least {minimum}; got {value}")


def _check_finite(value: float, option: str) -> None:
    import math

    from ..errors import InputError

    if not math.isfinite(value):
        raise InputError(f"{option} must be a finite number; got {value}")


def _check_images(folder: Path, option: str) -> None:
    """A folder that holds patches (listing it is cheap; reading them is the extractor's work)."""
    from ..errors import InputError, ZoomLDMError
    from ..evaluation.fid import list_images

    check_input(folder, option, kind="dir")
    try:
        list_images(folder)
    except ZoomLDMError as err:
        raise InputError(f"{option} {folder}: {err}") from None


def _check_real(real: Path) -> None:
    """``--real``: a folder of patches or a statistics ``.npz`` that loads and holds finite numbers."""
    import numpy as np

    from ..errors import InputError, ZoomLDMError
    from ..evaluation.frechet import FeatureStatistics

    if real.suffix != ".npz":
        _check_images(real, "--real")
        return
    check_input(real, "--real")
    try:
        stats = FeatureStatistics.load(real)
    except ZoomLDMError:
        raise
    except Exception as err:  # numpy/zipfile raise many types for a damaged archive
        raise InputError(
            f"--real {real}: not a readable statistics .npz ({type(err).__name__}); recompute it or give the "
            "folder of real patches"
        ) from None
    if not (np.isfinite(stats.mu).all() and np.isfinite(stats.sigma).all()):
        raise InputError(f"--real {real}: non-finite values (NaN/inf) in the statistics; recompute them")


def _read_rgb(path: Path, what: str = "image"):
    import numpy as np

    from ..errors import InputError

    if not path.exists():
        raise InputError(f"{what} {path}: image not found (check the path)")
    check_input(path, what)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path, key=0)  # the full-resolution page of a pyramid
        else:
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = None  # large generated images are the point here
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
    except Exception as err:  # Pillow / tifffile raise many types for damaged or foreign files
        detail = " ".join(str(err).split())[:80]
        raise InputError(
            f"{what} {path}: not a readable image ({type(err).__name__}: {detail}); give a PNG, JPEG or TIFF"
        ) from None
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise InputError(f"{path.name}: expected an 8-bit RGB image, got {array.dtype} {list(array.shape)}")
    return array[..., :3]


def _read_array(path: Path, what: str):
    import numpy as np

    from ..errors import InputError

    check_input(path, what)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".safetensors", ".pt", ".pth"):
        raise InputError(f"{what} {path}: expected .npy, .pt or .safetensors embeddings")
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            if len(tensors) != 1:
                raise InputError(f"{what} {path}: holds {len(tensors)} tensors; expected exactly one")
            array = next(iter(tensors.values()))
        else:
            import torch

            value = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(value, torch.Tensor):
                raise InputError(f"{what} {path}: must hold a single tensor, not a {type(value).__name__}")
            array = value.double().numpy()
    except InputError:
        raise
    except Exception as err:  # numpy / safetensors / torch raise many types for damaged files
        raise InputError(
            f"{what} {path}: damaged or not a {suffix} array file ({type(err).__name__}); recompute it"
        ) from None
    array = np.asarray(array)
    if array.ndim < 2 or array.shape[0] < 2 or not np.issubdtype(array.dtype, np.number):
        raise InputError(
            f"{what} {path}: expected at least 2 numeric embeddings [N, ...]; got {list(array.shape)}"
        )
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(
            f"{what} {path}: {bad} non-finite values (NaN/inf) in the embeddings; recompute them"
        )
    return array
