#!/usr/bin/env python
"""The embedded model's demo large image under a schedule: time, structure coherence, constraint PSNR.

    .venv/bin/python benchmarks/bench_embedded_large.py                       # demo.CPU_LARGE_IMAGE
    .venv/bin/python benchmarks/bench_embedded_large.py --settings '{"t0": 1000, "stride": 100, "inner_steps": 2}'
    .venv/bin/python benchmarks/bench_embedded_large.py --settings '{...}' --settings '{...}'   # one load, rows

Generates the 1024² image at 20x jointly with its 5x guide, conditioned on the bundled real region's SSL grid
(the call of ``zoomldm.demo.large_image``), and prints one table row: seconds, mean structure-tensor coherence
(σ = 8 px; ``tools/embedded_results``) of the whole image, of the tile interiors and of the image with its
Fourier phases randomised, the seam contrast (low-frequency steps on the 256-px tile grid over those
elsewhere; 1 = no visible seams), the real region's values, and the constraint PSNR against the guide. benchmarks/RESULTS.md ("the demo's large image").
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    from zoomldm.demo import CPU_LARGE_IMAGE, DEMO_IMAGE
    from zoomldm.models.encoders import encode_region_grid
    from zoomldm.pipeline import load_embedded

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--settings",
        action="append",
        default=None,
        help="JSON of large-image options by CLI name (repeatable)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, default=None, help="also write the images (<save>-<row>.png)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = [json.loads(text) for text in args.settings] if args.settings else [dict(CPU_LARGE_IMAGE)]
    tool = _module("embedded_results", REPO / "tools" / "embedded_results.py")

    pipe, encoder = load_embedded()
    with resources.files("zoomldm.assets").joinpath(DEMO_IMAGE).open("rb") as f:
        region = np.asarray(Image.open(f).convert("RGB"))
    grid = encode_region_grid(encoder, region).cpu()
    real = (
        f"{tool.structure_coherence(region):.3f} / {tool.interior_coherence(region):.3f} / "
        f"{tool.seam_contrast(region):.2f}"
    )
    print(
        "| settings | s | coherence | interiors | phases randomised | seam contrast "
        "| real (coherence / interiors / seams) | PSNR dB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for index, settings in enumerate(runs):
        start = time.perf_counter()
        result = pipe.generate_large(reference=grid, guide="5x", seed=args.seed, progress=False, **settings)
        took = time.perf_counter() - start
        image = result.image
        if args.save:
            Image.fromarray(image).save(args.save.with_name(f"{args.save.stem}-{index}.png"))
        row = [
            json.dumps(settings),
            f"{took:.0f}",
            f"{tool.structure_coherence(image):.3f}",
            f"{tool.interior_coherence(image):.3f}",
            f"{tool.structure_coherence(tool.phase_randomised(image)):.3f}",
            f"{tool.seam_contrast(image):.2f}",
            real,
            f"{result.metrics['output']['psnr']:.1f}",
        ]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
