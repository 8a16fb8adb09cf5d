#!/usr/bin/env python
"""RESULTS.md for the embedded model: per magnification, a Fréchet distance between generated and real crops.

    .venv/bin/python tools/embedded_results.py --work build/embedded [--model src/zoomldm/assets/tiny_brca]

Real crops: windows of ``brca_001.jpeg`` covering each magnification's field of view (256·2^k px at 20x,
half-overlapping), reduced to 256². Generated: patches of the trained model and of the random ``tiny``
model (what ``zoomldm demo`` ran offline before), each conditioned on the store's SSL grids of that level.

Feature space (no network, no downloaded weights; the project's Inception and UNI extractors need files
this machine lacks): a fixed 15-d colour/texture descriptor per image — per RGB channel its mean and
standard deviation, and the standard deviation of three Laplacian-pyramid bands (detail at 1, 2 and 4 px
scales after 2× steps). It measures what a flat field or noise gets wrong (colour, contrast, texture
scale), not tissue semantics. Distances use :func:`zoomldm.evaluation.frechet.frechet_distance`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def descriptor(images: np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` → ``[N, 15]`` colour/texture statistics (see the module docstring)."""
    import torch.nn.functional as F

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    feats = [x.mean((2, 3)), x.std((2, 3))]
    level = x
    for _ in range(3):
        down = F.avg_pool2d(level, 2)
        up = F.interpolate(down, scale_factor=2, mode="bilinear", align_corners=False)
        feats.append((level - up).std((2, 3)))
        level = down
    return torch.cat(feats, 1).numpy().astype(np.float64)


def coherence_map(image: np.ndarray, sigma: float = 8.0) -> np.ndarray:
    """Per-pixel structure-tensor coherence of a uint8 RGB image's grey values, in [0, 1].

    Gradients (Sobel, after a Gaussian of σ 1 px) form the tensor ``J`` smoothed at ``sigma``; the
    coherence ``√((Jxx−Jyy)² + 4Jxy²) / (Jxx+Jyy)`` is 1 where one orientation dominates (stroma fibres,
    nuclear outlines) and near 0 for isotropic texture.
    """
    from PIL import Image
    from scipy import ndimage as ndi

    grey = np.asarray(Image.fromarray(image).convert("L"), dtype=np.float64)
    grey = ndi.gaussian_filter(grey, 1.0)
    gx, gy = ndi.sobel(grey, 1), ndi.sobel(grey, 0)
    jxx, jyy, jxy = (ndi.gaussian_filter(a, sigma) for a in (gx * gx, gy * gy, gx * gy))
    return np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + 1e-9)


def structure_coherence(image: np.ndarray, sigma: float = 8.0) -> float:
    """Mean structure-tensor coherence (:func:`coherence_map`). At 20x (0.5 µm/px) and σ = 8 px: 0.25-0.50
    over ten 1024² regions of ``brca_001.jpeg``, 0.21 for the previous embedded model's demo large image,
    0.31 for the shipped one's (docs/embedded_model.md)."""
    return float(coherence_map(image, sigma).mean())


def interior_coherence(image: np.ndarray, tile: int = 256, band: int = 24, sigma: float = 8.0) -> float:
    """Mean coherence away from a ``tile`` grid (``band`` px either side of each seam left out): tile seams
    are straight edges, which would raise the measure of a tiled image."""
    coherence = coherence_map(image, sigma)
    keep = np.ones(image.shape[:2], bool)
    for edge in range(tile, image.shape[0], tile):
        keep[edge - band : edge + band, :] = False
    for edge in range(tile, image.shape[1], tile):
        keep[:, edge - band : edge + band] = False
    return float(coherence[keep].mean())


def seam_contrast(image: np.ndarray, tile: int = 256, sigma: float = 4.0) -> float:
    """How much stronger the image's low-frequency edges are on a ``tile`` grid than elsewhere: the mean
    absolute step of the RGB image blurred at ``sigma`` px (tone, not nuclei) across the seam lines, over
    the mean step across every other line of pixels, both directions. 1 = the seams are invisible to it;
    a mosaic of tiles in different tones is well above. Sixteen 1024² regions of ``brca_001.jpeg`` (4096²,
    tiled at 1024): 0.81 - 1.11; the bundled demo region 0.94 (docs/embedded_model.md).
    """
    from scipy import ndimage as ndi

    x = image.astype(np.float64)
    blurred = np.stack([ndi.gaussian_filter(x[..., c], sigma) for c in range(x.shape[-1])], axis=-1)
    seam_sum = rest_sum = 0.0
    for axis in (1, 0):  # steps between columns, then between rows
        steps = np.abs(np.diff(blurred, axis=axis)).sum(-1).mean(1 - axis)  # [side - 1]
        seams = np.arange(tile - 1, steps.shape[0], tile)  # the step between pixel tile-1 and tile, ...
        rest = np.ones(steps.shape[0], bool)
        rest[seams] = False
        if seams.size:
            seam_sum += float(steps[seams].mean())
            rest_sum += float(steps[rest].mean())
    return seam_sum / rest_sum if rest_sum else float("nan")


def phase_randomised(image: np.ndarray, seed: int = 0) -> np.ndarray:
    """The image with random Fourier phases: the same amplitude spectrum per channel, one set of phases for
    all three (keeps the colours), the mean kept — texture with the image's statistics and no structure."""
    rng = np.random.default_rng(seed)
    x = image.astype(np.float64)
    phases = np.angle(np.fft.rfft2(rng.standard_normal(x.shape[:2])))
    phases[0, 0] = 0.0  # keep the mean
    out = np.stack(
        [
            np.fft.irfft2(np.abs(np.fft.rfft2(x[..., c])) * np.exp(1j * phases), s=x.shape[:2])
            for c in range(3)
        ],
        axis=-1,
    )
    return np.clip(out, 0, 255).round().astype(np.uint8)


def real_crops(image: np.ndarray, downsample: int, size: int = 256) -> np.ndarray:
    from PIL import Image

    region = size * downsample
    stride = max(region // 2, 1)
    h, w = image.shape[:2]
    out = []
    for y in range(0, h - region + 1, stride):
        for x in range(0, w - region + 1, stride):
            crop = Image.fromarray(image[y : y + region, x : x + region])
            out.append(np.asarray(crop.reduce(downsample) if downsample > 1 else crop))
    return np.stack(out)


def generate(pipe, dataset, level: int, n: int, steps: int, seed: int) -> np.ndarray:
    count, start = int(dataset.counts[level]), int(dataset.offsets[level])
    grids = [dataset.raw_grid(start + (i % count)) for i in range(n)]
    mag = dataset.levels[level]
    result = pipe(
        ssl=grids, magnification=mag, num_images=n, num_inference_steps=steps, seed=seed, progress=False
    )
    return result.images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="the --work of train_embedded_model.py")
    parser.add_argument(
        "--domain", choices=["pathology", "satellite"], default="pathology", help="satellite: tiny_naip"
    )
    parser.add_argument("--model", type=Path, default=None, help="default: <work>/<tiny_brca|tiny_naip>")
    parser.add_argument("--image", type=Path, default=None, help="default: brca_001.jpeg / naip_001.jpg")
    parser.add_argument(
        "--demo",
        type=Path,
        default=None,
        help="a `zoomldm demo --domain satellite` output folder: also measure its large image (structure "
        "coherence, seam contrast against real regions of --image) and its super-resolution",
    )
    parser.add_argument("--per-level", type=int, default=24)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default: <work>/RESULTS_embedded.md (then a section of benchmarks/RESULTS.md)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from zoomldm.evaluation.frechet import frechet_distance
    from zoomldm.io.images import load_image
    from zoomldm.pipeline import ZoomLDMPipeline
    from zoomldm.train.config import check_store

    satellite = args.domain == "satellite"
    data = REPO.parent / "shared" / "data"
    args.image = args.image or data / ("naip_001.jpg" if satellite else "brca_001.jpeg")
    model = args.model or args.work / ("tiny_naip" if satellite else "tiny_brca")
    trained = ZoomLDMPipeline.from_pretrained(model)
    random = ZoomLDMPipeline.from_config("tiny-naip" if satellite else "tiny", seed=0)
    dataset = check_store(str(args.work / "store.zarr"), trained.config)
    image = load_image(args.image)
    rows, record = [], {}
    started = time.perf_counter()
    for level, count in enumerate(dataset.counts):
        if count == 0:
            continue
        mag = dataset.levels[level]
        real = real_crops(image, mag.downsample)
        if len(real) < 4:
            continue
        fr = descriptor(real)
        mu_r, sig_r = fr.mean(0), np.cov(fr, rowvar=False)
        entry = {"real_crops": len(real)}
        for name, pipe in (("trained", trained), ("random", random)):
            fake = generate(pipe, dataset, level, args.per_level, args.steps, args.seed + level)
            ff = descriptor(fake)
            entry[name] = float(frechet_distance(mu_r, sig_r, ff.mean(0), np.cov(ff, rowvar=False)))
            entry[f"{name}_mean_rgb"] = np.round(fake.reshape(-1, 3).mean(0), 1).tolist()
        entry["real_mean_rgb"] = np.round(real.reshape(-1, 3).mean(0), 1).tolist()
        record[mag.name] = entry
        rows.append(
            f"| {mag.name} | {len(real)} | {args.per_level} | {entry['trained']:.4f} | {entry['random']:.4f} | "
            f"{entry['real_mean_rgb']} | {entry['trained_mean_rgb']} | {entry['random_mean_rgb']} |"
        )
        print(rows[-1], flush=True)
    demo_rows = _demo_rows(args.demo, image) if args.demo is not None else []
    text = "\n".join(
        [
            f"# Results: the embedded offline model (`zoomldm/assets/{model.name}`)",
            "",
            "Fréchet distance per magnification between generated patches and real crops of "
            f"`{args.image.name}` (lower is better), for the embedded trained model and for the random `tiny` "
            "model the offline demo used before (issue 16). Feature space: a fixed 15-d colour/texture "
            "descriptor (RGB mean and std, std of three Laplacian-pyramid bands; `tools/embedded_results.py`), "
            "since no pretrained feature network is available offline. Generated: "
            f"{args.per_level} patches per level, DDIM {args.steps} steps, guidance 2, conditioned on the training "
            "store's SSL grids of that level; real: half-overlapping windows of the field of view at that "
            "magnification, reduced to 256². Levels coarser than the image (0.625x and below) are omitted.",
            "",
            "| level | real crops | generated | FD trained | FD random | real mean RGB | trained mean RGB | "
            "random mean RGB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            *demo_rows,
            f"Command: `.venv/bin/python tools/embedded_results.py --work <work> --domain {args.domain} "
            f"--per-level {args.per_level} --steps {args.steps}"
            + (" --demo <demo out>" if args.demo is not None else "")
            + f"` ({time.perf_counter() - started:.0f} s on this machine).",
            "",
        ]
    )
    out = args.out or args.work / "RESULTS_embedded.md"
    out.write_text(text)
    (args.work / "results.json").write_text(json.dumps(record, indent=2))
    print(f"wrote {out}", file=sys.stderr)


def _demo_rows(demo: Path, image: np.ndarray) -> list[str]:
    """The demo's large image and super-resolution measured: structure coherence (interior) and seam
    contrast of the large image against the same measures of real regions of ``image`` of its size
    (tiled at the large image's tile), and the super-resolution's constraint PSNR against its input."""
    import tifffile

    summary = json.loads((demo / "summary.json").read_text())
    large = tifffile.imread(summary["large_image"]["path"], level=0)
    side = large.shape[0]
    regions = [image[y : y + side, x : x + side] for y in range(0, image.shape[0] - side + 1, side)
               for x in range(0, image.shape[1] - side + 1, side)]  # fmt: skip
    real_coh = [interior_coherence(r) for r in regions]
    real_seam = [seam_contrast(r) for r in regions]
    sr = summary["super_resolution"]
    return [
        f"Demo outputs (`{demo}`): the large image ({side}² at 1x, {summary['large_image']['guide']} guide) "
        f"and the super-resolution of a real Sentinel-2 crop ({sr['from']} → {sr['to']}).",
        "",
        "| measure | demo large image | real regions of the same size (min – max) |",
        "| --- | --- | --- |",
        f"| structure coherence (interior) | {interior_coherence(large):.3f} | "
        f"{min(real_coh):.3f} – {max(real_coh):.3f} ({len(regions)} regions) |",
        f"| seam contrast (tile 256) | {seam_contrast(large):.3f} | {min(real_seam):.3f} – {max(real_seam):.3f} |",
        f"| large image: constraint PSNR vs its guide | {summary['large_image']['metrics']['psnr']:.2f} dB | – |",
        f"| super-resolution: constraint PSNR vs the Sentinel-2 input | {sr['metrics']['psnr']:.2f} dB | – |",
        "",
    ]


if __name__ == "__main__":
    main()
