"""Feature-extraction throughput (``zoomldm features``): 256² tiles per second.

Rows, all measured in one run on the same batch of real tiles (crops of ``../shared/data/brca_001.jpeg``):

- ``VQ encode`` — the VQ-f4 encoder alone, the part every feature setting pays (the reference, 1.00x);
- ``features <blocks>`` — the whole :class:`~zoomldm.features.unet_features.UNetFeatureExtractor` call:
  VQ encode, noise to t, Summarizer, UNet up to the last requested block (the rest of the decoder is
  skipped), pooling; for ``mid``, the default ``mid,up1`` and every decoder block;
- ``slide, 20x + 5x`` — :func:`~zoomldm.features.extract.extract_slide` end to end on a pyramidal TIFF of
  ``--slide-tiles`` 20x tiles: tissue mask, reading, SSL embedding of the base tiles, 20x and 5x features,
  fusion; tiles/s counts the 20x tiles (the rows of the output).

Models: ``--preset small`` = the compat checkpoint (``../shared/compat/small_checkpoint.ckpt``) with a
random 2-block ViT (32-d) as SSL encoder; ``--preset brca`` = the published architecture with random
weights and a random 1-block ViT of width 1024 (timing only: weights do not change the cost).

    python benchmarks/bench_features.py --threads 1 --clock process      # CPU (shared machine), compat model
    python benchmarks/bench_features.py --preset brca --tiles 4 --slide-tiles 0
    python benchmarks/bench_features.py --preset brca --device cuda --dtype bfloat16 --tiles 256 --batch-size 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import sync
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def load_models(preset: str, device: str, dtype: str):
    from zoomldm.models.encoders import build_encoder
    from zoomldm.pipeline import ZoomLDMPipeline

    if preset == "small":
        compat = SHARED / "compat"
        pipe = ZoomLDMPipeline.from_official(
            compat / "small_checkpoint.ckpt", config=compat / "small_config.yaml"
        )
        encoder_kwargs = dict(embed_dim=32, depth=2, num_heads=2, img_size=64)
    else:
        pipe = ZoomLDMPipeline.from_config(preset)
        encoder_kwargs = dict(embed_dim=pipe.config.ssl_channels, depth=1, num_heads=8, img_size=224)
    pipe.to(device=device, dtype=dtype)
    torch.manual_seed(0)
    encoder = build_encoder("timm:vit_tiny_patch16_224", weights="random", device=device, **encoder_kwargs)
    return pipe, encoder


def real_tiles(n: int) -> np.ndarray:
    with Image.open(SHARED / "data" / "brca_001.jpeg") as image:
        pixels = np.asarray(image.convert("RGB"))
    cells = [(r, c) for r in range(16) for c in range(16)]
    return np.stack([pixels[r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256] for r, c in cells[:n]])


def write_slide(folder: Path, tiles: int) -> Path:
    """A pyramidal JPEG TIFF at 0.5 µm/px, 4 base tiles high and ``tiles / 4`` wide."""
    import tifffile

    with Image.open(SHARED / "data" / "brca_001.jpeg") as image:
        pixels = np.asarray(image.convert("RGB"))[:1024, : 256 * max(1, tiles // 4)]
    path = folder / "bench_slide.tif"
    options = dict(tile=(256, 256), compression="jpeg", photometric="rgb", resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tif:
        tif.write(pixels, resolution=(2e4, 2e4), **options)
        tif.write(
            np.asarray(Image.fromarray(pixels).reduce(2)), subfiletype=1, resolution=(1e4, 1e4), **options
        )
    return path


def timed(fn, repeats: int, device: str, clock=time.perf_counter) -> float:
    """Best time of ``repeats`` calls after one warm-up call, on ``clock``."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = clock()
        fn()
        sync(device)
        best = min(best, clock() - start)
    return best


def main() -> None:
    from zoomldm.features.extract import FeatureSettings, extract_slide
    from zoomldm.features.unet_features import UNetFeatureExtractor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["small", "brca", "naip"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--tiles", type=int, default=8, help="tiles per timed batch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--slide-tiles", type=int, default=16, help="20x tiles of the slide row (0: skip)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "process"],
        help="process = CPU seconds of this process: robust on a shared CPU (use with --threads 1)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time

    pipe, encoder = load_models(args.preset, args.device, args.dtype)
    images = real_tiles(args.tiles)
    grids = [
        torch.randn(encoder.dim, 1, 1, generator=torch.Generator().manual_seed(i)) for i in range(args.tiles)
    ]
    n_up = len(pipe.unet.up_blocks)

    def batched(fn):
        def run():
            for start in range(0, args.tiles, args.batch_size):
                fn(slice(start, start + args.batch_size))

        return run

    def vq(s):
        x = torch.from_numpy(images[s]).permute(0, 3, 1, 2).float() / 127.5 - 1
        pipe.encode_images(x)

    rows = [("VQ encode (reference)", timed(batched(vq), args.repeats, args.device, clock), args.tiles)]
    for blocks in (("mid",), ("mid", "up1"), ("mid", *(f"up{i}" for i in range(n_up)))):
        extractor = UNetFeatureExtractor(pipe, blocks, timestep=100, seed=0)

        def run(s, extractor=extractor):
            extractor(images[s], grids[s], "20x")

        label = f"features {','.join(blocks)}" + (" (default)" if blocks == ("mid", "up1") else "")
        rows.append((label, timed(batched(run), args.repeats, args.device, clock), args.tiles))

    if args.slide_tiles > 0:
        with tempfile.TemporaryDirectory() as tmp:
            path = write_slide(Path(tmp), args.slide_tiles)
            settings = FeatureSettings(batch_size=args.batch_size, tissue_threshold=0.0)
            n = [0]

            def slide():
                n[0] = len(extract_slide(path, "bench", pipe, encoder, settings).features)

            seconds = timed(slide, 1, args.device, clock)
            rows.append((f"slide, 20x + 5x, concat (read, embed, {n[0]} tiles)", seconds, n[0]))

    reference = rows[0][2] / rows[0][1]
    device = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    )
    print(
        f"preset {args.preset}, {device}, {args.dtype}, batch {args.batch_size}, {args.tiles} tiles per timing"
    )
    print("| row | tiles | seconds | tiles/s | vs VQ encode |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, seconds, tiles in rows:
        rate = tiles / seconds
        print(f"| {label} | {tiles} | {seconds:.2f} | {rate:.2f} | {rate / reference:.2f}x |")


if __name__ == "__main__":
    main()
