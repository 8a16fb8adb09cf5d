"""Large-latent decode throughput: Gaussian-blended windows (SPEC §4.4) against one full-latent decode.

Random weights in the chosen VQ-f4 architecture (``--preset brca`` is the published size); timing only.
Rows: a single full decode of the whole latent (the reference, when it fits), then the windowed decode at
each batch size, in memory and streamed into a pyramidal TIFF. ``work`` is the decoded pixel count relative
to the full decode (overlapping windows decode each pixel several times: ≈ (window/stride)² far from the
edges, less at this small size).

    .venv/bin/python benchmarks/bench_decode.py --preset brca --latent 96 --batch-sizes 1,9
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import sync

from zoomldm.config import ZoomLDMConfig
from zoomldm.io import PyramidalTiffWriter
from zoomldm.models.autoencoder import build_vae
from zoomldm.sampling.decode import DecodeConfig, decode_large, decode_large_to, window_starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="brca", help="architecture of the VQ-f4 (brca, naip, tiny)")
    parser.add_argument("--latent", type=int, default=96, help="latent side (output side = 4x)")
    parser.add_argument("--batch-sizes", default="1,9", help="window batch sizes to time")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--no-full", action="store_true", help="skip the single full decode (too large)")
    args = parser.parse_args()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    vae = build_vae(ZoomLDMConfig.from_preset(args.preset).vae).to(device, dtype).eval()
    latent = torch.randn(1, 3, args.latent, args.latent, generator=torch.Generator().manual_seed(0)).to(
        device, dtype
    )
    config = DecodeConfig()
    n = len(window_starts(args.latent, config.window, config.stride)) ** 2
    side = args.latent * 4
    work = n * min(config.window, args.latent) ** 2 / args.latent**2
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(
        f"VQ-f4 preset {args.preset}, latent {args.latent}² -> {side}² px, {args.device} {args.dtype}, threads {threads}"
    )

    with torch.inference_mode():  # warm-up (allocator, kernels)
        vae.decode(latent[:, :, :16, :16])
    rows: list[tuple[str, int, float, float]] = []
    if not args.no_full:
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            vae.decode(latent).sample.float().cpu()
        sync(device)
        rows.append(("full decode (1 pass)", 1, time.perf_counter() - start, 1.0))
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        cfg = DecodeConfig(batch_size=batch)
        sync(device)
        start = time.perf_counter()
        decode_large(vae, latent, cfg, progress=False)
        sync(device)
        rows.append((f"windows 64/16, batch {batch}", n, time.perf_counter() - start, work))
    with tempfile.TemporaryDirectory() as tmp:
        batch = int(args.batch_sizes.split(",")[-1])
        start = time.perf_counter()
        with PyramidalTiffWriter(Path(tmp) / "out.tif", side, side, mpp=0.5) as writer:
            decode_large_to(vae, latent, writer, DecodeConfig(batch_size=batch), progress=False)
        rows.append((f"windows batch {batch} -> TIFF (jpeg)", n, time.perf_counter() - start, work))

    reference = rows[0][2] if not args.no_full else None
    print()
    print("| mode | windows | seconds | windows/s | output Mpx/s | work vs full | time vs full |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, windows, seconds, w in rows:
        ratio = f"{seconds / reference:.2f}x" if reference else "-"
        wps = f"{windows / seconds:.2f}" if windows > 1 else "-"
        print(
            f"| {name} | {windows} | {seconds:.2f} | {wps} | {side * side / seconds / 1e6:.3f} | {w:.2f}x | {ratio} |"
        )


if __name__ == "__main__":
    main()
