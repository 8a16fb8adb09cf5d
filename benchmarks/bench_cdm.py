"""CDM sampling throughput (DDIM over the 65 Summarizer tokens) and the unconditional patch rate.

Random weights (timing only). For each DiT size and batch size: token sets/s, DiT forwards/s and tokens/s
(65 per set per step) for ``--steps`` DDIM steps, with the ratio against the smallest batch of the same
size in the same run. ``--e2e`` adds the end-to-end unconditional rate: CDM tokens → guided DDIM with the
pipeline's UNet (``pipe(context=tokens)``) → decode, against the same pipeline conditioned on a real
Summarizer context (the CDM's overhead over reference-conditioned sampling).

GPU:  python benchmarks/bench_cdm.py --presets DiT-B,DiT-XL --device cuda --dtype bf16 --batch-sizes 1,16,64,256 --steps 200 --e2e brca
CPU:  python benchmarks/bench_cdm.py --presets DiT-S,DiT-B --device cpu --batch-sizes 1,8 --steps 10 --e2e tiny
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import sync

from zoomldm.models.cdm import ConditioningDiT
from zoomldm.models.cdm_diffusion import CDMDiffusion, sample_cdm

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def time_cdm(model: ConditioningDiT, batch: int, steps: int, device: str) -> float:
    diffusion = CDMDiffusion()
    mag = torch.zeros(batch, dtype=torch.long, device=device)
    sample_cdm(model, mag, num_steps=2, diffusion=diffusion)  # warm-up
    sync(device)
    start = time.perf_counter()
    sample_cdm(
        model, mag, num_steps=steps, diffusion=diffusion, generator=torch.Generator(device).manual_seed(0)
    )
    sync(device)
    return time.perf_counter() - start


def bench_e2e(
    preset: str, cdm_preset: str, device: str, dtype: torch.dtype, batch: int, cdm_steps: int, steps: int
) -> None:
    from zoomldm.pipeline import ZoomLDMPipeline

    pipe = ZoomLDMPipeline.from_config(preset).to(device=device, dtype=dtype)
    dim = pipe.config.context_dim
    cdm = ConditioningDiT.from_preset(cdm_preset, token_dim=dim, num_magnifications=len(pipe.scales))
    cdm = cdm.to(device=device, dtype=dtype).eval()
    grid = torch.randn(pipe.summarizer.config.input_channels, 4, 4, device=device, dtype=dtype)

    def run(unconditional: bool) -> float:
        sync(device)
        start = time.perf_counter()
        if unconditional:
            context = sample_cdm(cdm, 2, batch_size=batch, num_steps=cdm_steps)
            pipe(
                context=context,
                magnification=2,
                num_images=batch,
                num_inference_steps=steps,
                batch_size=batch,
                progress=False,
            )
        else:
            pipe(
                ssl=grid,
                magnification=2,
                num_images=batch,
                num_inference_steps=steps,
                batch_size=batch,
                progress=False,
            )
        sync(device)
        return time.perf_counter() - start

    run(False)  # warm-up
    ref, unc = run(False), run(True)
    print(
        f"\nend to end, pipeline {preset!r}, CDM {cdm_preset} ({cdm_steps} DDIM steps), UNet {steps} guided steps, batch {batch}"
    )
    print("| conditions | seconds | patches/s | time vs reference-conditioned |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| Summarizer(reference grid) | {ref:.2f} | {batch / ref:.2f} | 1.00x |")
    print(f"| CDM sample (unconditional) | {unc:.2f} | {batch / unc:.2f} | {unc / ref:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="DiT-S,DiT-B")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps (the authors sample with 200)")
    ap.add_argument("--token-dim", type=int, default=512)
    ap.add_argument(
        "--e2e", default=None, help="also time unconditional patches with this pipeline preset (tiny, brca)"
    )
    ap.add_argument("--e2e-batch", type=int, default=4)
    ap.add_argument("--e2e-unet-steps", type=int, default=10)
    args = ap.parse_args()
    device, dtype = args.device, DTYPES[args.dtype]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    print(
        f"device {device}, {args.dtype}, {args.steps} DDIM steps, token_dim {args.token_dim}, threads {torch.get_num_threads()}"
    )
    print(
        f"| DiT | params | batch | seconds | sets/s | forwards/s | tokens/s | sets/s vs batch {batches[0]} |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for preset in args.presets.split(","):
        torch.manual_seed(0)
        model = (
            ConditioningDiT.from_preset(preset, token_dim=args.token_dim)
            .to(device=device, dtype=dtype)
            .eval()
        )
        params = sum(p.numel() for p in model.parameters()) / 1e6
        base = None
        for batch in batches:
            seconds = time_cdm(model, batch, args.steps, device)
            rate = batch / seconds
            base = base or rate
            print(
                f"| {preset} | {params:.1f}M | {batch} | {seconds:.2f} | {rate:.2f} | {args.steps / seconds:.2f} | "
                f"{batch * 65 * args.steps / seconds:.0f} | {rate / base:.2f}x |"
            )
    if args.e2e:
        bench_e2e(
            args.e2e,
            args.presets.split(",")[0],
            device,
            dtype,
            args.e2e_batch,
            args.steps,
            args.e2e_unet_steps,
        )


if __name__ == "__main__":
    main()
