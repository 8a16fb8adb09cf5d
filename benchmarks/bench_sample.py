"""Patch-sampling throughput: guided DDIM with the full-size (or tiny) ZoomLDM UNet, random weights.

Prints one row per (dtype, batch size): patches/s, UNet forwards/s (CFG counts 2 rows per patch per
step), achieved TFLOP/s and its fraction of (a) the device's measured dense matmul rate in the same run
(bf16 on GPU, fp32 on CPU) and (b) the arithmetic floor the brief states (201 GFLOP per 64×64 forward;
FlopCounterMode counts 210.6 GFLOP for the brca UNet, attention included). Decoding is timed separately.

GPU:  python benchmarks/bench_sample.py --preset brca --device cuda --dtypes bf16,fp16 --batch-sizes 1,2,4,8,16,32,64
CPU:  python benchmarks/bench_sample.py --preset tiny --device cpu --dtypes fp32 --batch-sizes 1,2,4 --steps 5
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import matmul_rate, sync
from torch.utils.flop_counter import FlopCounterMode

from zoomldm import ZoomLDMPipeline
from zoomldm.sampling.guidance import guided_eps
from zoomldm.schedule import make_scheduler

BRIEF_FLOOR_GFLOP = 201.0  # per UNet forward at 64×64, from the project brief


def unet_flops(pipe: ZoomLDMPipeline) -> float:
    s = pipe.config.latent_size
    x = torch.randn(1, 3, s, s, device=pipe.device, dtype=pipe.dtype)
    c = torch.randn(1, 65, pipe.config.context_dim, device=pipe.device, dtype=pipe.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipe.unet(x, torch.tensor([500], device=pipe.device), encoder_hidden_states=c)
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="brca")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default="bf16,fp16")
    ap.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=2.0)
    args = ap.parse_args()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    peak_dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    peak = matmul_rate(args.device, peak_dtype)
    print(f"device {args.device}; measured {str(peak_dtype).split('.')[-1]} matmul rate {peak:.2f} TFLOP/s")
    header = "| preset | dtype | batch | steps | patches/s | UNet fwd/s | TFLOP/s | % of matmul rate | % of 201-GFLOP floor rate | decode patches/s |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in args.dtypes.split(","):
        pipe = ZoomLDMPipeline.from_config(args.preset).to(device=args.device, dtype=dtypes[name])
        flops = unet_flops(pipe)
        s = pipe.config.latent_size
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            ctx = torch.randn(bs, 65, pipe.config.context_dim, device=args.device)
            noise = torch.randn(bs, 3, s, s, device=args.device)
            sched = make_scheduler("ddim", pipe.config.schedule)
            with torch.no_grad():
                guided_eps(pipe.unet, noise, 500, ctx, args.guidance)  # warm-up (kernels, allocator)
                sync(args.device)
                t = time.perf_counter()
                z = pipe.denoise(noise, ctx, args.steps, args.guidance, scheduler="ddim", progress=False)
                sync(args.device)
                dt = time.perf_counter() - t
                t = time.perf_counter()
                pipe.decode_latents(z)
                sync(args.device)
                dec = time.perf_counter() - t
            del sched
            fwd = 2 * bs * args.steps / dt  # CFG rows per second
            tflops = fwd * flops / 1e12
            # the brief's floor applies to the published architecture only
            floor = (
                f"{100 * fwd * BRIEF_FLOOR_GFLOP / 1e3 / peak:.1f}%"
                if args.preset in ("brca", "naip")
                else "n/a"
            )
            print(
                f"| {args.preset} | {name} | {bs} | {args.steps} | {bs / dt:.3f} | {fwd:.1f} | {tflops:.3f} | "
                f"{100 * tflops / peak:.1f}% | {floor} | {bs / dec:.2f} |"
            )


if __name__ == "__main__":
    main()
