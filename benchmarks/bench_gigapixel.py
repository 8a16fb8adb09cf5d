"""Gigapixel engine: peak host memory against image size, and per-block timings (issue 14).

Each size runs in a fresh subprocess (so that ``ru_maxrss`` is that run's peak): joint sampling of a
``size²`` output under a fixed guide (``size / k`` pixels, random, k = 2 for the compat model: the
super-resolution / cascade-stage case; the tiles' contexts come from a random base grid), tiles on the zarr
canvas beside the output, post-processing (``--post-steps``, off by default) in row bands of the canvas,
decode streamed from the canvas to a pyramidal TIFF. The sizes grow 4× in pixels each.

Reported per size: tiles, blocks, wall seconds of the joint stage and of the decode, seconds per block
(mean, min, max over the blocks of all steps), peak RSS, peak RSS minus the RSS after loading the model
(what the run itself added), and the peak's ratio to the smallest size's. Then the multi-rank argument:
blocks of a step are independent, so with ``W`` ranks a step costs ``ceil(B / W)`` block times plus the
serial part (the guide's step, the barrier); the predicted speed-up for W = 2, 4, 8 from the measured
per-block time.

    nice -n 19 .venv/bin/python benchmarks/bench_gigapixel.py                  # 512², 1024², 2048²
    .venv/bin/python benchmarks/bench_gigapixel.py --sizes 256,512 --steps 1   # quick look
    nice -n 19 .venv/bin/python benchmarks/bench_gigapixel.py --cascade        # issue 24: 1024², 2048², 4096²

``--cascade`` runs real cascaded requests past one guide patch (a coarse canvas from a reference grid
file, then two stages) and compares each run's peak RSS with the dry-run plan's peak host memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPAT = Path(os.environ.get("ZOOMLDM_SHARED", REPO.parent / "shared")) / "compat"


def _rss_mib() -> float:
    """Current resident set size (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(
    size: int,
    steps: int,
    inner: int,
    tile_batch: int,
    seed: int,
    decode_stride: int | None,
    post_steps: int,
    cache_mib: float = 2048.0,
) -> dict:
    """One run at ``size``² (in this process); returns its measurements."""
    import numpy as np
    import torch

    from zoomldm import ZoomLDMPipeline
    from zoomldm.sampling.constrained import FixedGuide, JointSamplingConfig
    from zoomldm.sampling.decode import DecodeConfig
    from zoomldm.sampling.joint import _plan_pair, base_settings, default_decode_config, render_large
    from zoomldm.sampling.output import RunState
    from zoomldm.sampling.postprocess import PostprocessConfig

    torch.set_num_threads(1)
    from zoomldm.sampling import constrained

    block_times: list[float] = []  # every block's seconds, step after step (what the engine measured)
    spread = constrained._spread
    constrained._spread = lambda seconds: (block_times.extend(seconds), spread(seconds))[1]
    pipe = ZoomLDMPipeline.from_official(
        COMPAT / "small_checkpoint.ckpt", config=COMPAT / "small_config.yaml"
    )
    target, guide_level = pipe.scales[0], pipe.scales[1]  # 20x tiles under a 10x guide: k = 2
    k = guide_level.downsample // target.downsample
    side = size // k
    rng = np.random.default_rng(seed)
    guide = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    plan = _plan_pair(pipe, guide_level, target, guide_shape=(side, side))
    g = target.grid_size
    grid = torch.from_numpy(rng.standard_normal((pipe.config.ssl_channels, plan.rows * g, plan.cols * g)))
    config = JointSamplingConfig(t0=50 * steps, stride=50, inner_steps=inner, tile_batch=tile_batch)
    post = PostprocessConfig(t0=50 * post_steps, context_cache_mib=cache_mib) if post_steps else None
    decode = default_decode_config(pipe)
    if decode_stride is not None:
        decode = DecodeConfig(window=decode.window, stride=decode_stride)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.tif"
        settings = base_settings(pipe, plan, seed, joint=config, decode=decode)
        state = RunState(out, settings)
        baseline = _rss_mib()
        started = time.perf_counter()
        result = render_large(
            pipe,
            plan,
            base_grid=grid.float(),
            guide=FixedGuide(guide),
            config=config,
            postprocess=post,
            decode=decode,
            seed=seed,
            out=out,
            settings=settings,
            state=state,
            guide_uint8=guide,
            compression="none",
            progress=False,
        )
        wall = time.perf_counter() - started
        state.clear()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "size": size,
        "tiles": plan.rows * plan.cols,
        "blocks": result.metrics["blocks"],
        "steps": steps,
        "wall_s": wall,
        "joint_s": result.metrics["seconds"]["joint"],
        "decode_s": result.metrics["seconds"]["decode"],
        "post_s": result.metrics["seconds"].get("postprocess", 0.0),
        "block_s": result.metrics["block_seconds"],
        "block_times": block_times,
        "guide_s": result.metrics["guide_seconds"],
        "baseline_mib": baseline,
        "peak_mib": peak,
        "latent_kept": result.latent is not None,
    }


def child_cascade(size: int, steps: int, inner: int, tile_batch: int, seed: int, decode_stride: int) -> dict:
    """One real cascaded request past one guide patch (issue 24), in this process: ``generate_large_image``
    of ``size``² at 1.25x with the compat model (a coarse canvas of ``(size/512)²`` 0.15625x patches from a
    random reference grid stored as .npy, read by block; then 0.15625x → 0.3125x → 1.25x), to a TIFF; and
    the dry-run plan of the same request made in this process just before it (its peak host memory)."""
    import numpy as np
    import torch

    from zoomldm import ZoomLDMPipeline
    from zoomldm.sampling.plan import plan_large

    torch.set_num_threads(1)
    pipe = ZoomLDMPipeline.from_official(
        COMPAT / "small_checkpoint.ckpt", config=COMPAT / "small_config.yaml"
    )
    options = dict(t0=50 * steps, stride=50, inner_steps=inner, tile_batch=tile_batch)
    options.update(decode_stride=decode_stride, no_postprocess=True)
    rng = np.random.default_rng(seed)
    n = size // pipe.config.image_size * pipe.magnification("1.25x").grid_size  # base tiles a side
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "grid.npy"
        grid = np.lib.format.open_memmap(ref, "w+", np.float32, (pipe.config.ssl_channels, n, n))
        for r in range(0, n, 256):
            grid[:, r : r + 256] = rng.standard_normal((grid.shape[0], min(256, n - r), n), np.float32)
        del grid
        out = Path(tmp) / "bench.tif"
        request = dict(target="1.25x", size=size, out=out, compression="none", **options)
        plan = plan_large(pipe, calibrate=False, **request)
        baseline = _rss_mib()
        started = time.perf_counter()
        result = pipe.generate_large(ref, seed=seed, progress=False, **request)
        wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    coarse = result.metrics["coarse"]
    return {
        "size": size,
        "coarse": f"{result.settings['coarse']['rows']}×{result.settings['coarse']['cols']}",
        "tiles": sum(s.tiles for s in plan.stages[1:]),
        "wall_s": wall,
        "coarse_s": coarse["seconds"]["total"],
        "baseline_mib": baseline,
        "peak_mib": peak,
        "planned_mib": plan.peak_host_bytes / 2**20,
        "largest_phase": next(t.name for t in plan.host_terms if t.name.startswith("largest phase")),
    }


def main_cascade(args) -> None:
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--cascade", "--child", str(size), "--steps", str(args.steps)]
        cmd += ["--inner-steps", str(args.inner_steps), "--tile-batch", str(args.tile_batch)]
        cmd += ["--seed", str(args.seed), "--decode-stride", str(args.decode_stride)]
        env = dict(os.environ, ZOOMLDM_PROGRESS="0")
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"compat model, generate --to 1.25x --size N (coarse canvas at 0.15625x, cascade 0.15625x → 0.3125x → "
        f"1.25x), {args.steps} outer step(s), {args.inner_steps} Newton iteration(s), tile batch "
        f"{args.tile_batch}, decode stride {args.decode_stride}, no post-processing, 1 CPU thread, reference "
        "grid in a .npy read by block, TIFF output\n"
    )
    print(
        "| size | coarse canvas | tiles | wall s | coarse s | planned peak MiB | measured peak RSS MiB | "
        "measured / planned | peak ratio to smallest | plan's largest phase |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['size']}² | {r['coarse']} | {r['tiles']} | {r['wall_s']:.1f} | {r['coarse_s']:.1f} | "
            f"{r['planned_mib']:.0f} | {r['peak_mib']:.0f} | {r['peak_mib'] / r['planned_mib']:.3f} | "
            f"{r['peak_mib'] / rows[0]['peak_mib']:.3f} | {r['largest_phase'].removeprefix('largest phase: ')} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="512,1024,2048", help="output sides in pixels (4× pixels apart)")
    parser.add_argument("--steps", type=int, default=1, help="outer steps")
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--tile-batch", type=int, default=16, help="tiles per block (16: 4×4 blocks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--decode-stride",
        type=int,
        default=16,
        help="decode window stride in latent px (official: 4 for the compat model's 16-px window; 16 keeps "
        "the CPU run short — the decode band, and so the memory, is one window high either way)",
    )
    parser.add_argument(
        "--post-steps",
        type=int,
        default=0,
        help="post-processing steps (t0 = 50·n, official windows; 0: off)",
    )
    parser.add_argument(
        "--context-cache-mib",
        type=float,
        default=2048.0,
        help="post-processing: keep the window contexts across steps up to this size (0: recompute per step)",
    )
    parser.add_argument(
        "--cascade",
        action="store_true",
        help="issue 24: real cascaded requests with a coarse canvas (--sizes 1024,2048,4096 at 1.25x), "
        "measured peak RSS against the dry-run plan's",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cascade:
        if args.sizes == "512,1024,2048":
            args.sizes = "1024,2048,4096"
        if args.child is not None:
            measured = child_cascade(
                args.child, args.steps, args.inner_steps, args.tile_batch, args.seed, args.decode_stride
            )
            print(json.dumps(measured))
        else:
            main_cascade(args)
        return
    if args.child is not None:
        measured = child(
            args.child,
            args.steps,
            args.inner_steps,
            args.tile_batch,
            args.seed,
            args.decode_stride,
            args.post_steps,
            args.context_cache_mib,
        )
        print(json.dumps(measured))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--child", str(size), "--steps", str(args.steps)]
        cmd += [
            "--inner-steps",
            str(args.inner_steps),
            "--tile-batch",
            str(args.tile_batch),
            "--seed",
            str(args.seed),
            "--decode-stride",
            str(args.decode_stride),
            "--post-steps",
            str(args.post_steps),
            "--context-cache-mib",
            str(args.context_cache_mib),
        ]
        env = dict(os.environ, ZOOMLDM_PROGRESS="0")
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first = rows[0]
    print(
        f"compat model, k = 2, {args.steps} outer step(s), {args.inner_steps} Newton iteration(s), "
        f"tile batch {args.tile_batch}, decode stride {args.decode_stride}, 1 CPU thread, "
        f"{args.post_steps} post-processing step(s) (context cache {args.context_cache_mib:g} MiB), "
        "decode streamed to TIFF\n"
    )
    print(
        "| size | tiles | blocks | joint s | post s | decode s | s/block (mean, min–max) | peak RSS MiB | "
        "peak − after-load MiB | peak ratio to smallest |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        b = r["block_s"]
        print(
            f"| {r['size']}² | {r['tiles']} | {r['blocks']} | {r['joint_s']:.1f} | {r['post_s']:.1f} | "
            f"{r['decode_s']:.1f} | "
            f"{b['mean']:.3f} ({b['min']:.3f}–{b['max']:.3f}) | {r['peak_mib']:.0f} | "
            f"{r['peak_mib'] - r['baseline_mib']:.0f} | {r['peak_mib'] / first['peak_mib']:.3f} |"
        )
    last = rows[-1]
    per_step = last["blocks"]
    times = last["block_times"]
    serial = last["guide_s"] / max(last["steps"], 1)  # the sampled guide's step (none for a fixed guide)
    rest = last["post_s"] + last["decode_s"]  # rank 0 only
    print(
        f"\nmulti-rank, from the largest run's {len(times)} measured block times ({per_step} blocks per step, "
        f"round robin over W ranks; a step ends when its slowest rank does; serial guide part {serial:.3f} "
        f"s/step; post-processing + decode {rest:.1f} s on rank 0):"
    )
    for world in (2, 4, 8):
        one = many = 0.0
        for k in range(0, len(times), per_step):
            step = times[k : k + per_step]
            one += sum(step) + serial
            many += max(sum(step[r::world]) for r in range(world)) + serial
        print(
            f"  W = {world}: joint stage {one / many:.2f}× (ideal {world}×), whole run "
            f"{(one + rest) / (many + rest):.2f}×"
        )


if __name__ == "__main__":
    main()
