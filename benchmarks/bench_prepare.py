"""Data-preparation throughput: base tiles per second through read → embed → VQ-encode → store.

Runs ``prepare_dataset`` end to end on a real slide (a crop of ``../shared/data/brca_001.jpeg`` written
as a pyramidal JPEG TIFF at 0.5 µm/px) and times each stage by wrapping the library's stage functions:

- read:  ``read_region`` per 256² image of any level (OpenSlide read of the nearest finer level +
         antialiased resize); it runs in a background thread, overlapped with the models, so it only
         limits throughput when it is the largest,
- embed: ``SSLEncoder.embed`` (one call per batch of base tiles),
- vq:    ``vq_encode`` of every level's 256² images (Σ_k 4^-k ≈ 1.33 images per base tile with all levels),
- store: ``StoreWriter.commit`` (append to the level arrays); part writes are in "other".

Rows: the test-sized models (the tiny timm ViT and the compat-sized VQ) and the published architectures
(UNI ViT-L/16 + brca VQ-f4, random weights) at a small tile count. Weights are random: timing only.
The ``tiles/s`` column is measured end to end; ``8-level tiles/s`` projects it to a full pathology
dataset (1.33 VQ images per base tile) from the per-stage times.

    python benchmarks/bench_prepare.py                        # CPU, both rows
    python benchmarks/bench_prepare.py --device cuda --large-tiles 256 --tiles 1024
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VQ_PER_TILE_ALL_LEVELS = sum(4.0**-k for k in range(8))


def write_slide(folder: Path, side: tuple[int, int]) -> Path:
    import tifffile

    with Image.open(SHARED / "data" / "brca_001.jpeg") as image:
        pixels = np.asarray(image.convert("RGB"))[: side[1], : side[0]]
    path = folder / f"brca_{side[0]}x{side[1]}.tif"
    options = dict(tile=(256, 256), compression="jpeg", photometric="rgb", resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tif:
        tif.write(pixels, resolution=(2e4, 2e4), **options)
        level = pixels
        for i in range(1, 4):
            if min(level.shape[:2]) < 512:
                break
            level = np.asarray(Image.fromarray(level).reduce(2))
            tif.write(level, subfiletype=1, resolution=(2e4 / 2**i, 2e4 / 2**i), **options)
    return path


class StageTimer:
    """Wraps the library's stage functions and accumulates their wall time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner, name: str, stage: str, count=lambda *a, **k: 1) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start
                self.calls[stage] += count(*args, **kwargs)

        setattr(owner, name, timed)
        self._restore = getattr(self, "_restore", []) + [(owner, name, original)]

    def restore(self) -> None:
        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)


def run(name, encoder, vae, slide: Path, levels: tuple[int, ...], batch_size: int) -> dict:
    from zoomldm.data import extract, store
    from zoomldm.data.extract import SlideSource
    from zoomldm.data.prepare import PrepareSettings, prepare_dataset
    from zoomldm.models.encoders import SSLEncoder

    timer = StageTimer()
    timer.wrap(extract, "read_region", "read")
    timer.wrap(SSLEncoder, "embed", "embed", count=lambda self, tiles, **k: len(tiles))
    timer.wrap(extract, "vq_encode", "vq", count=lambda vae, images, *a: len(images))
    timer.wrap(store.StoreWriter, "commit", "store")
    out = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        settings = PrepareSettings(levels=levels, tissue_threshold=0.0, batch_size=batch_size)
        start = time.perf_counter()
        report = prepare_dataset(
            [SlideSource("bench", str(slide))], out / "s.zarr", encoder, vae, settings, progress=False
        )
        total = time.perf_counter() - start
    finally:
        timer.restore()
        shutil.rmtree(out, ignore_errors=True)
    tiles = timer.calls["embed"]
    vq_images = timer.calls["vq"]
    assert tiles and vq_images == sum(report.totals.values())
    per_tile = {k: timer.seconds[k] / tiles for k in ("embed", "store")}
    per_read = timer.seconds["read"] / timer.calls["read"]  # one 256² image of any level
    per_vq = timer.seconds["vq"] / vq_images
    compute = {**per_tile, "read": per_read * VQ_PER_TILE_ALL_LEVELS, "vq": per_vq * VQ_PER_TILE_ALL_LEVELS}
    other = total - sum(timer.seconds[k] for k in ("embed", "vq", "store"))  # read overlaps the models
    # reading overlaps the models (background thread): the slower of the two paces a slide
    models = per_tile["embed"] + compute["vq"] + per_tile["store"] + other / tiles
    projected = 1 / max(compute["read"], models)
    bottleneck = max(compute, key=compute.get)
    return dict(name=name, tiles=tiles, vq=vq_images, total=total, per_tile=per_tile, per_vq=per_vq, per_read=per_read,
                other=other / tiles, tiles_s=tiles / total, projected=projected, bottleneck=bottleneck)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=64, help="base tiles for the small-model row (a square)")
    parser.add_argument(
        "--large-tiles", type=int, default=2, help="base tiles for the ViT-L + VQ-f4 row (0: skip)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sys.path.insert(0, str(REPO / "src"))
    from zoomldm.config import ZoomLDMConfig
    from zoomldm.models import build_vae
    from zoomldm.models.encoders import build_encoder

    folder = Path(tempfile.mkdtemp(prefix="bench_slide_"))
    rows = []
    try:
        side = int(round(args.tiles**0.5)) * 256
        slide = write_slide(folder, (side, side))
        levels = tuple(range(int(np.log2(side // 256)) + 1))
        tiny = build_encoder("timm:vit_tiny_patch16_224", weights="random", device=args.device,
                             embed_dim=32, depth=2, num_heads=2, img_size=64)  # fmt: skip
        small_vq = build_vae(ZoomLDMConfig.from_preset("tiny").vae).to(args.device).eval()
        rows.append(run("tiny ViT (32-d) + compat-size VQ", tiny, small_vq, slide, levels, args.batch_size))
        if args.large_tiles:
            large = write_slide(folder, (256 * args.large_tiles, 256))
            uni = build_encoder("uni", weights="random", device=args.device)
            vq_f4 = build_vae(ZoomLDMConfig.from_preset("brca").vae).to(args.device).eval()
            rows.append(run("UNI ViT-L/16 + brca VQ-f4", uni, vq_f4, large, (0,), args.batch_size))
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    ref = rows[0]["tiles_s"]
    print(f"device {args.device}, {args.threads} threads, batch {args.batch_size}, torch {torch.__version__}")
    print("| models | base tiles | VQ images | tiles/s (measured) | vs first row | read ms/image | "
          "embed ms/tile | VQ ms/image | store ms/tile | other ms/tile | 8-level tiles/s | bottleneck |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        p = r["per_tile"]
        print(f"| {r['name']} | {r['tiles']} | {r['vq']} | {r['tiles_s']:.3f} | {r['tiles_s'] / ref:.3f}x | "
              f"{1e3 * r['per_read']:.1f} | {1e3 * p['embed']:.1f} | {1e3 * r['per_vq']:.1f} | {1e3 * p['store']:.1f} | "
              f"{1e3 * r['other']:.1f} | {r['projected']:.3f} | {r['bottleneck']} |")  # fmt: skip


if __name__ == "__main__":
    main()
