"""Constraint error against sampling cost for joint multi-scale sampling: the sweep behind ``--schedule fast``.

For each (timestep stride, Newton iterations) pair, one joint-sampling run (SPEC §4.3) under the same guide
and seed reports the constraint error of the result against the guide (PSNR / MAE of the downsampled tiles,
before post-processing, :mod:`zoomldm.evaluation.constraints` arithmetic via ``metrics["tiles"]``) and its
cost: UNet rows (``metrics["unet_forwards"]``: cond and uncond rows count separately), VQ passes (images
through the VQ encoder or decoder) and seconds. The outer steps are set by the stride (t0 stays 1000: the
sampler starts from pure noise), the inner steps directly.

Two models, because they answer different questions:

* ``embedded`` — the package's small *trained* model (:func:`zoomldm.pipeline.load_embedded`),
  conditioned on a real H&E region (``brca_001.jpeg`` embedded with its own encoder): its VQ decoder
  inverts its encoder, so the Newton iterations can pull the tiles toward the guide and the error is
  meaningful. To keep the sweep short on a CPU, one 20x tile under a 10x guide (``region``: a single tile of
  the 512² image; its block is one tile with ``tile_batch 1``) is generated per setting.
* ``compat`` — the official-format small checkpoint (random weights, 64-px tiles): its VQ does not invert
  (its constraint error barely moves with the Newton iterations), so this row set measures *cost* on the
  real code path; 4 tiles (128² at 20x under a 10x guide).

The choice of the ``fast`` preset is a trade-off of cost against this constraint error, not a claim about
image quality. Run (from the repo root; ~10 min on one loaded core)::

    nice -n 19 .venv/bin/python benchmarks/sweep_schedule.py --out /tmp/sweep_schedule.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

#: (stride, inner_steps) settings of each model; stride 50 / 10 iterations is the official schedule (the
#: embedded model's run cheapest first, so that an interrupted sweep still has its low-cost end)
GRIDS = {
    "embedded": [(200, 0), (200, 1), (200, 3), (100, 2), (100, 3), (200, 5), (100, 5), (50, 10)],
    "compat": [(50, 10), (100, 5), (100, 2), (200, 3), (200, 1), (200, 0)],
}


def _embedded():
    from zoomldm.io.images import load_image
    from zoomldm.models.encoders import encode_region_grid
    from zoomldm.pipeline import load_embedded

    loaded = load_embedded("cpu")
    if loaded is None:
        raise SystemExit("this installation ships no embedded model")
    pipe, encoder = loaded
    here = Path(__file__).resolve().parents[1]
    image = load_image(here.parent / "shared" / "data" / "brca_001.jpeg")[1024:1536, 1024:1536]
    grid = encode_region_grid(encoder, image).cpu()  # [C, 2, 2]: the field of view of a 10x guide
    request = dict(guide="10x", size=512, region=(0, 0, 256, 256), tile_batch=1)
    return pipe, grid, request


def _compat():
    from zoomldm import ZoomLDMPipeline

    here = Path(__file__).resolve().parents[1]
    compat = here.parent / "shared" / "compat"
    pipe = ZoomLDMPipeline.from_official(
        compat / "small_checkpoint.ckpt", config=compat / "small_config.yaml"
    )
    generator = torch.Generator().manual_seed(0)
    grid = torch.randn(pipe.config.ssl_channels, 2, 2, generator=generator)  # a 10x guide's field of view
    request = dict(guide="10x", size=2 * pipe.config.image_size, tile_batch=4)
    return pipe, grid, request


def sweep(model: str, grid_settings: list[tuple[int, int]], seed: int = 0) -> list[dict]:
    pipe, grid, request = {"embedded": _embedded, "compat": _compat}[model]()
    rows = []
    for stride, inner in grid_settings:
        start = time.perf_counter()
        result = pipe.generate_large(
            reference=grid,
            stride=stride,
            inner_steps=inner,
            no_postprocess=True,
            seed=seed,
            progress=False,
            **request,
        )
        seconds = time.perf_counter() - start
        row = {
            "model": model,
            "stride": stride,
            "outer_steps": len(range(0, 1000, stride)),
            "inner_steps": inner,
            "tiles": result.metrics["computed_tiles"],
            "unet_forwards": result.metrics["unet_forwards"],
            "vq_passes": result.metrics["vq_passes"],
            "psnr": result.metrics["tiles"]["psnr"],
            "mae": result.metrics["tiles"]["mae"],
            "seconds": seconds,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | stride | outer steps | Newton iters | UNet rows / tile | VQ passes / tile | PSNR vs guide (dB) "
        "| MAE (levels) | s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['stride']} | {r['outer_steps']} | {r['inner_steps']} | "
            f"{r['unet_forwards'] / r['tiles']:.0f} | {r['vq_passes'] / r['tiles']:.0f} | {r['psnr']:.2f} | "
            f"{r['mae']:.2f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="embedded,compat", help="comma-separated: embedded, compat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument(
        "--only", default=None, help="run only these settings, e.g. 50:10,100:5 (stride:inner_steps)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    only = None
    if args.only:
        only = [tuple(int(v) for v in item.split(":")) for item in args.only.split(",")]
    rows: list[dict] = []
    for model in args.models.split(","):
        rows += sweep(model, only or GRIDS[model], args.seed)
    print(table(rows))
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
