"""Seams of the coarse canvas (``zoomldm.sampling.coarse``): sliding windows against independent patches.

The embedded trained model (trained UNet and VQ-f4), a reference grid from its own encoder on a real H&E
region, a 2 × 2-patch canvas at 2.5x sampled with window strides L/4 (the default), L/2 and L (= independent
patches: same noise and per-patch conditions, no overlap), decoded with one whole VQ pass (a blended decode
would hide part of a seam). Metric: the mean |jump| between neighbouring pixels on a line divided by the
same away from every ¼-patch line (both axes): at the patch border, on the ½-patch lines, on the ¼/¾ lines;
1 = as smooth as elsewhere.

    nice -n 19 .venv/bin/python benchmarks/bench_coarse_seams.py --seeds 0,1,2,3 --stride 250
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from zoomldm.io.images import load_image
from zoomldm.models.encoders import encode_region_grid
from zoomldm.pipeline import load_embedded
from zoomldm.sampling.coarse import generate_coarse_canvas
from zoomldm.sampling.newton import JointSamplingConfig

IMAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "brca_001.jpeg"


def jumps(pixels: np.ndarray) -> np.ndarray:
    """Mean |difference| between pixel columns k and k+1 (and rows), averaged over both axes."""
    a = pixels.astype(np.float64)
    return (np.abs(np.diff(a, axis=1)).mean(axis=(0, 2)) + np.abs(np.diff(a, axis=0)).mean(axis=(1, 2))) / 2


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--stride", type=int, default=250, help="outer stride from t0 = 1000 (250: 4 steps)")
    parser.add_argument("--image", type=Path, default=IMAGE)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe, encoder = load_embedded()
    level, tile, latent = pipe.magnification("2.5x"), pipe.config.image_size, pipe.config.latent_size
    side = 2 * level.grid_size * tile
    region = np.ascontiguousarray(load_image(args.image)[:side, :side])
    grid = encode_region_grid(encoder, region).float()
    config = JointSamplingConfig(t0=1000, stride=args.stride, inner_steps=0)
    lines = {"border": [tile - 1], "half": [tile // 2 - 1, 3 * tile // 2 - 1]}
    lines["quarter"] = [tile // 4 - 1, 3 * tile // 4 - 1, 5 * tile // 4 - 1, 7 * tile // 4 - 1]
    marked = [k for group in lines.values() for k in group]
    print("| seed | window stride | patch border | ½-patch lines | ¼-patch lines |")
    print("| --- | --- | ---: | ---: | ---: |")
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, stride in (
            ("L/4 (default)", latent // 4),
            ("L/2", latent // 2),
            ("L (independent)", latent),
        ):
            canvas = generate_coarse_canvas(
                pipe, level, grid, 2, 2, seed=seed, config=config, window_stride=stride, progress=False
            )
            image = pipe.decode_latents(canvas[None])[0]
            j = jumps(((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8))
            base = np.mean([j[k] for k in range(len(j)) if min(abs(k - b) for b in marked) > 2])
            ratio = {key: np.mean([j[k] for k in ks]) / base for key, ks in lines.items()}
            print(
                f"| {seed} | {name} | {ratio['border']:.2f} | {ratio['half']:.2f} | {ratio['quarter']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
