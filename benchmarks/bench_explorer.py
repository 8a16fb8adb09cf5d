"""Zoom explorer latency: time to the first generated tile at a new magnification (``zoomldm view --generate``).

For one model it builds an :class:`zoomldm.viewer.explorer.Explorer` over an image at ``--from`` (fresh cache)
and times, through the same calls the HTTP handler makes (``tile_png``):

* ``first_tile_s`` — the first tile of the first generated level (one block: super-resolution of its parent
  window; includes the first-call warm-up of the device);
* ``next_level_tile_s`` — a tile one level deeper whose parent blocks the user has already seen (they are
  generated first, untimed): one block, the latency of zooming one level further in;
* ``--seam N``: instead, the seam statistic of the first generated level over a row of ``N`` blocks (an
  image ``N·B/2 × B/2`` px at ``--from``, every block generated): the served pixels blended across borders
  (the default ``blend``) and the same generations served without blending (``blend = 0``, each block's
  centre only: the explorer before blending), by :func:`zoomldm.viewer.explorer.seam_statistics`;
* ``block_s`` — seconds per block over every block generated (the explorer's own record), and the PSNR of the
  downsampled blocks against their parent pixels (meaningful for trained weights only).

Models: ``--preset brca`` (the published architecture with random weights: timing only, no weights are
downloadable on the GPU machine), ``--preset embedded`` (the package's trained offline model), or
``--checkpoint PATH [--config YAML]`` (e.g. the compat model). ``--schedule fast`` is the pipeline's fast
preset (sampling/settings.py SCHEDULES), applied before the other options.

    # GPU (gpu_check.sh "explorer")
    python benchmarks/bench_explorer.py --device cuda --preset brca --schedule fast
    # CPU: the compat model and the embedded model (short schedules)
    .venv/bin/python benchmarks/bench_explorer.py --checkpoint ../shared/compat/small_checkpoint.ckpt \\
        --config ../shared/compat/small_config.yaml --t0 100 --stride 50 --inner-steps 1 --inversion-steps 2
    .venv/bin/python benchmarks/bench_explorer.py --preset embedded --t0 200 --stride 100 --inner-steps 2 \\
        --inversion-steps 2 --window-patches 1
    # seams, blended vs not, over 3 blocks of the embedded model
    .venv/bin/python benchmarks/bench_explorer.py --preset embedded --t0 300 --stride 100 --inner-steps 3 \\
        --inversion-steps 2 --no-postprocess --window-patches 1 --seam 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import sync

from zoomldm import ZoomLDMPipeline
from zoomldm.viewer.explorer import Explorer, seam_statistics

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brca_001.jpeg"


def load_pipe(args: argparse.Namespace) -> tuple[ZoomLDMPipeline, str]:
    if args.checkpoint:
        pipe = ZoomLDMPipeline.from_pretrained(args.checkpoint, config=args.config, device=args.device)
        return pipe.to(dtype=args.dtype) if args.dtype != "float32" else pipe, Path(args.checkpoint).name
    if args.preset == "embedded":
        from zoomldm.models.embedded import load_embedded

        loaded = load_embedded(args.device)
        if loaded is None:
            raise SystemExit("this installation ships no embedded model")
        return loaded[0], "embedded tiny_brca"
    pipe = ZoomLDMPipeline.from_config(args.preset).to(device=args.device, dtype=args.dtype)
    return pipe, f"{args.preset} (random weights)"


def test_image(side: int, seed: int = 0) -> np.ndarray:
    """``side²`` pixels of H&E (brca_001.jpeg, box-filtered) when the repository's data is here, else smooth
    pink noise (timing does not depend on the content)."""
    from PIL import Image

    if DATA.is_file():
        with Image.open(DATA) as image:
            return np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BOX))
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(side // 8, side // 8, 3))
    noise = np.asarray(Image.fromarray(np.uint8(np.clip(128 + 40 * noise, 0, 255))).resize((side, side)))
    return np.clip(noise * np.array([1.0, 0.6, 1.0]) + np.array([60, 20, 60]), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="embedded", help="brca, naip, tiny (random weights) or embedded")
    parser.add_argument("--checkpoint", help="a model instead of --preset (dir, official file)")
    parser.add_argument("--config")
    parser.add_argument("--dtype", default=None, help="default float16 on CUDA, float32 on the CPU")
    parser.add_argument("--schedule", default=None, help="the pipeline's schedule preset: official or fast")
    parser.add_argument("--from", dest="source", default="5x")
    parser.add_argument("--window-patches", type=int, default=2)
    parser.add_argument("--t0", type=int)
    parser.add_argument("--stride", type=int)
    parser.add_argument("--inner-steps", type=int)
    parser.add_argument("--inversion-steps", type=int)
    parser.add_argument("--no-postprocess", action="store_true")
    parser.add_argument("--tile-batch", default=None)
    parser.add_argument("--optimize", action="store_true", help="pipe.optimize() (default on CUDA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seam", type=int, default=0, help="measure seams over a row of N blocks instead")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("float16" if cuda else "float32")
    if not cuda:
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))

    start = time.perf_counter()
    pipe, model = load_pipe(args)
    if cuda or args.optimize:
        pipe.optimize()
    load_s = time.perf_counter() - start
    settings = {
        name: value
        for name, value in (
            ("schedule", args.schedule),
            ("t0", args.t0),
            ("stride", args.stride),
            ("inner_steps", args.inner_steps),
            ("inversion_steps", args.inversion_steps),
            (
                "tile_batch",
                int(args.tile_batch) if args.tile_batch and args.tile_batch != "auto" else args.tile_batch,
            ),
        )
        if value is not None
    }
    if args.no_postprocess:
        settings["no_postprocess"] = True
    patch = pipe.config.image_size
    if args.seam:
        print(
            json.dumps(dict(measure_seams(pipe, args, settings), model=model, settings=settings)), flush=True
        )
        return
    image = test_image(2 * patch)  # 2×2 patches at --from
    ring = patch // 4
    block = 2 * (args.window_patches * patch - 2 * ring)
    with tempfile.TemporaryDirectory() as cache:
        explorer = Explorer(
            pipe,
            image,
            args.source,
            cache=cache,
            seed=args.seed,
            window_patches=args.window_patches,
            # tile (0, 0) lies in block (0, 0) clear of its blend zone: one block per timed tile
            tile_size=min(256, block - ring),
            **settings,
        )
        try:
            levels = explorer.levels
            first_level = explorer.geometry.image_level + 1
            sync(args.device)
            t = time.perf_counter()
            explorer.tile_png(first_level, 0, 0)
            sync(args.device)
            first_tile_s = time.perf_counter() - t
            row: dict = {
                "model": model,
                "device": torch.cuda.get_device_name(args.device) if cuda else "cpu",
                "dtype": args.dtype,
                "settings": settings,
                "levels": [m.name for m in levels],
                "block_px": explorer.geometry.block,
                "window_px": explorer.geometry.window,
                "load_s": round(load_s, 2),
                "first_tile_s": round(first_tile_s, 2),
            }
            if len(levels) > 2:
                # zooming one level further where the user has looked: the parents exist, one block is new
                level = first_level + 1
                for key in explorer.tile_blocks(level, 0, 0):
                    g = explorer.geometry
                    half = g.block // 2
                    x0, y0 = key[1] * half - g.ring, key[2] * half - g.ring
                    explorer.region(1, x0, y0, g.window, g.window)  # the parent pixels (generated, untimed)
                sync(args.device)
                before = explorer.generated
                t = time.perf_counter()
                explorer.tile_png(level, 0, 0)
                sync(args.device)
                row["next_level_tile_s"] = round(time.perf_counter() - t, 2)
                row["next_level_blocks"] = explorer.generated - before
            # the seam statistic needs neighbours: the block right of the first one at the first level
            if explorer.geometry.step_blocks(1)[0] > 1:
                explorer.block(1, 1, 0)
                row["seam_first_level"] = explorer.level_record(1)["seam"]
            records = [
                explorer.level_record(step)
                for step in range(1, len(levels))
                if explorer.level_record(step)["blocks"]
            ]
            seconds = [b["seconds"] for r in records for b in r["blocks"].values()]
            row["blocks"] = len(seconds)
            row["block_s_mean"] = round(float(np.mean(seconds)), 2)
            row["psnr_db_mean"] = round(
                float(np.mean([b["psnr_db"] for r in records for b in r["blocks"].values()])), 2
            )
            if cuda:
                row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        finally:
            explorer.close()
    print(json.dumps(row), flush=True)


def measure_seams(pipe: ZoomLDMPipeline, args: argparse.Namespace, settings: dict) -> dict:
    """Seam statistics of one generated level, a row of ``args.seam`` blocks, with and without blending."""
    patch = pipe.config.image_size
    ring = patch // 4
    half = args.window_patches * patch - 2 * ring  # a block's footprint at --from
    image = test_image(args.seam * half)[:half]
    with tempfile.TemporaryDirectory() as cache:
        explorer = Explorer(
            pipe,
            image,
            args.source,
            cache=cache,
            seed=args.seed,
            window_patches=args.window_patches,
            **settings,
        )
        try:
            g = explorer.geometry
            target = explorer.levels[1]
            start = time.perf_counter()
            width, height = g.width << 1, g.height << 1
            blended = explorer.region(1, 0, 0, width, height)
            seconds = time.perf_counter() - start
            record = explorer.level_record(1)
            explorer.geometry = dataclasses.replace(g, blend=0)  # the same generations, each block's centre
            unblended = explorer.region(1, 0, 0, width, height)
            explorer.geometry = g
        finally:
            explorer.close()
    return {
        "level": target.name,
        "blocks": len(record["blocks"]),
        "block_px": g.block,
        "blend_px": g.blend,
        "s_per_block": round(seconds / len(record["blocks"]), 2),
        "psnr_db_mean": record["psnr_db_mean"],
        "blended": seam_statistics(blended, g.block),
        "record_seam": record["seam"],
        "unblended": seam_statistics(unblended, g.block),
    }


if __name__ == "__main__":
    main()
