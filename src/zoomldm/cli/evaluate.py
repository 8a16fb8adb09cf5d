"""``zoomldm eval``: FID per magnification, constraint metrics, Fréchet distance of embedding sets."""

from __future__ import annotations

import json
from pathlib import Path

import typer

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

    level = scales_for(domain).parse(magnification)
    if (generated is None) == (cdm is None):
        raise ZoomLDMError(
            "give either --generated (a folder of patches) or --cdm with --checkpoint to generate them"
        )
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
    from ..evaluation.constraints import constraint_metrics

    metrics = constraint_metrics(_read_rgb(image), _read_rgb(guide), factor=factor, filter=filter)
    record = {
        "image": str(image),
        "guide": str(guide),
        "factor": factor,
        "filter": filter,
        **metrics.to_dict(),
    }
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(record, indent=2))
    typer.echo(
        f"PSNR {metrics.psnr:.2f} dB  MAE {metrics.mae:.3f}  max |diff| {metrics.max_abs:.1f}  ({filter} filter)"
    )


@eval_app.command("embedding-fd")
def embedding_fd(
    a: Path = typer.Argument(..., help="embeddings [N, ...] (.npy, .pt, .safetensors with one tensor)"),
    b: Path = typer.Argument(..., help="embeddings [M, ...] of the same per-sample shape"),
) -> None:
    """Fréchet distance between two embedding sets (e.g. real Summarizer tokens vs CDM samples)."""
    from ..evaluation.frechet import embedding_frechet_distance

    typer.echo(f"Fréchet distance: {embedding_frechet_distance(_read_array(a), _read_array(b)):.6f}")


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


def _read_rgb(path: Path):
    import numpy as np

    from ..errors import ZoomLDMError

    if not path.is_file():
        raise ZoomLDMError(f"image not found: {path}")
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        array = tifffile.imread(path, key=0)  # the full-resolution page of a pyramid
    else:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # large generated images are the point here
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ZoomLDMError(f"{path.name}: expected an 8-bit RGB image, got {array.dtype} {list(array.shape)}")
    return array[..., :3]


def _read_array(path: Path):
    import numpy as np

    from ..errors import ZoomLDMError

    if not path.is_file():
        raise ZoomLDMError(f"file not found: {path}")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
        if len(tensors) != 1:
            raise ZoomLDMError(f"{path.name} holds {len(tensors)} tensors; expected exactly one")
        return next(iter(tensors.values()))
    if path.suffix in (".pt", ".pth"):
        import torch

        value = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(value, torch.Tensor):
            raise ZoomLDMError(f"{path.name} must hold a single tensor")
        return value
    raise ZoomLDMError(f"{path.name}: expected .npy, .pt or .safetensors")
