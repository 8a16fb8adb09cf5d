"""Training throughput and peak memory: one ZoomLDM optimizer step (Summarizer + UNet forward, ε-MSE,
backward, AdamW, EMA update) exactly as :class:`zoomldm.train.trainer.Trainer` runs it, random weights.

Inputs are synthetic and already on the device (data loading excluded): latents ``[B,3,64,64]`` and SSL
grids of the sizes magnification-balanced sampling gives (1×1, 2×2, 4×4 and 8×8 for 5 of 8 levels).
One row per (batch, gradient checkpointing, torch.compile); ``vs ref`` is samples/s relative to the row
without checkpointing or compile at the same batch size, measured in the same run. TFLOP/s is the model's
forward + backward FLOPs per step (``FlopCounterMode`` on the reference row; recomputation by gradient
checkpointing not counted) per second, also as a share of the device's dense matmul rate measured in the
same run.

GPU:  python benchmarks/bench_train.py --preset brca --device cuda --precision bf16 --batch-sizes 32,64,128
CPU:  python benchmarks/bench_train.py --preset tiny --device cpu --precision no --batch-sizes 1,2 --steps 3
"""

from __future__ import annotations

import argparse
import gc
import itertools
import resource
import time

import torch
from _common import matmul_rate, sync
from torch.utils.flop_counter import FlopCounterMode

from zoomldm.config import ZoomLDMConfig
from zoomldm.models import Summarizer, build_unet
from zoomldm.train.config import OptimSection
from zoomldm.train.ema import official_ema
from zoomldm.train.objective import ZoomLDMTrainingModel, diffusion_loss, training_noise_scheduler
from zoomldm.train.optim import build_optimizer

GRID_SIDES = (1, 2, 4, 8, 8, 8, 8, 8)  # per pathology level after pooling to ≤ 8×8


def batch(cfg: ZoomLDMConfig, bs: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s, c = cfg.latent_size, cfg.ssl_channels
    sides = [GRID_SIDES[i % len(GRID_SIDES)] for i in range(bs)]
    latents = torch.randn(bs, 3, s, s, generator=g).to(device)
    grids = [torch.randn(c, k, k, generator=g).to(device) for k in sides]
    mags = (
        torch.tensor([i % len(GRID_SIDES) for i in range(bs)], device=device) % cfg.summarizer["mag_levels"]
    )
    return latents, grids, mags


def run(cfg, bs, device, precision, checkpointing, compiled, steps, warmup):
    """samples/s, peak memory (GiB; CPU: max RSS of the process), model FLOPs per step (reference rows
    only: FlopCounterMode does not see inside compiled graphs), seconds per step."""
    torch.manual_seed(0)
    unet, summarizer = build_unet(cfg.unet), Summarizer(**cfg.summarizer)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    if compiled:
        unet.compile()
    model = ZoomLDMTrainingModel(unet, summarizer).to(device).train()
    opt = build_optimizer(model.parameters(), OptimSection(lr=2e-5))
    ema = official_ema(list(model.unet.parameters()))
    sched = training_noise_scheduler(cfg.schedule)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=precision == "fp16")
    gen = torch.Generator(device=device).manual_seed(0)
    latents, grids, mags = batch(cfg, bs, device)

    def step():
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss = diffusion_loss(model, sched, latents, grids, mags, 0.1, gen).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        ema.step(model.unet.parameters())

    flops = None
    if not checkpointing and not compiled:  # model FLOPs of one step (recomputation not counted)
        with FlopCounterMode(display=False) as counter:
            with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
                loss = diffusion_loss(model, sched, latents, grids, mags, 0.1, gen).mean()
            loss.backward()
        opt.zero_grad(set_to_none=True)
        flops = float(counter.get_total_flops())
    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    dt = time.perf_counter() - t
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB, process lifetime
    return bs * steps / dt, peak, flops, dt / steps  # the caller frees the memory (gc + empty_cache)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="brca")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="bf16", choices=["no", "bf16", "fp16"])
    ap.add_argument("--batch-sizes", default="32,64,128")
    ap.add_argument("--checkpointing", default="off,on", help="off, on or off,on")
    ap.add_argument("--compile", default="off,on", help="off, on or off,on")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    cfg = ZoomLDMConfig.from_preset(args.preset)
    peak_dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    rate = matmul_rate(args.device, peak_dtype)
    name = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(f"device {name}; measured {str(peak_dtype).split('.')[-1]} matmul rate {rate:.2f} TFLOP/s")
    mem = "peak GiB (allocated)" if args.device.startswith("cuda") else "peak RSS GiB (process)"
    header = f"| preset | precision | batch | grad ckpt | compile | s/step | samples/s | vs ref | {mem} | TFLOP/s | % of matmul rate |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    flags = lambda text: [v == "on" for v in text.split(",")]  # noqa: E731
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        ref = ref_flops = None
        for ckpt, comp in itertools.product(flags(args.checkpointing), flags(args.compile)):
            label = f"| {args.preset} | {args.precision} | {bs} | {'on' if ckpt else 'off'} | {'on' if comp else 'off'} |"
            try:
                sps, peak, flops, per_step = run(
                    cfg, bs, args.device, args.precision, ckpt, comp, args.steps, args.warmup
                )
            except torch.cuda.OutOfMemoryError:
                print(f"{label} OOM | | | | | |")
                continue
            finally:
                if comp:
                    torch._dynamo.reset()
                gc.collect()
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
            if not ckpt and not comp:
                ref, ref_flops = sps, flops
            tflops = ref_flops / per_step / 1e12 if ref_flops else float("nan")
            vs = f"{sps / ref:.2f}×" if ref else "n/a"
            print(
                f"{label} {per_step:.3f} | {sps:.2f} | {vs} | {peak:.2f} | {tflops:.3f} | {100 * tflops / rate:.1f}% |"
            )


if __name__ == "__main__":
    main()
