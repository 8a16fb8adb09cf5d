#!/usr/bin/env bash
# The prepared GPU session (device tool): every GPU benchmark + the GPU-marked tests, logs under $OUT.
# Each step has its own timeout so one slow benchmark cannot eat the others' time. The steps together
# need ~20 minutes, more than one device call (10 min) and than one session's device time (15 min), so run
# them as separate calls, the ones a session needs first, e.g.
#   bash benchmarks/gpu_check.sh sample joint joint_compile joint_auto        # ~8 min
#   bash benchmarks/gpu_check.sh train cdm features prepare gpu_tests         # ~5 min
#   bash benchmarks/gpu_check.sh gigapixel explorer                           # ~7 min
# (no arguments: every step). Run from the repo root with .venv carried or the packages installed.
#
# gigapixel: the brca architecture (random weights: timing and memory only) in float16 with pipe.optimize(),
# a 2048² region (64 tiles, one 8×8 block, --tile-batch 64) of an 8192² image at 20x (cascade 0.625x →
# 1.25x → 20x), official and fast schedule in turn. It prints one JSON line per schedule: seconds of the
# region's stage (joint sampling + post-processing + decode + TIFF), seconds per gigapixel of output at that
# rate, peak GPU memory (torch.cuda.max_memory_allocated), and the dry-run plan's estimate of both for the
# same request (sampling/plan/), so the estimate is checked against the measurement.
set -uo pipefail
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
PY=${PY:-python}
export PYTHONUNBUFFERED=1
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(sample joint joint_compile joint_auto train cdm features prepare gpu_tests gigapixel explorer)
want() { local s; for s in "${STEPS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
run() { local name=$1 limit=$2; shift 2; want "$name" || return 0; echo "== $name"; timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"; }
nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.log"
run sample        90 $PY benchmarks/bench_sample.py --preset brca --device cuda --dtypes bf16,fp16 --batch-sizes 1,4,16,64 --steps 50
run joint        150 $PY benchmarks/bench_joint.py --preset brca --sizes 1024,4096 --outer-steps 2 --device cuda --dtype float16 --tile-batch 64
run joint_compile 150 $PY benchmarks/bench_joint.py --preset brca --sizes 1024 --outer-steps 2 --device cuda --dtype float16 --tile-batch 64 --variants compile
run joint_auto    75 $PY benchmarks/bench_joint.py --preset brca --sizes 4096 --outer-steps 1 --device cuda --dtype float16 --tile-batch auto --variants optimize --skip-baseline
run train        100 $PY benchmarks/bench_train.py --preset brca --device cuda --precision bf16 --batch-sizes 32,64,128 --steps 20
run cdm           60 $PY benchmarks/bench_cdm.py --presets DiT-B,DiT-XL --device cuda --dtype bf16 --batch-sizes 1,16,64,256 --steps 200 --e2e brca --e2e-batch 64 --e2e-unet-steps 50
run features      45 $PY benchmarks/bench_features.py --preset brca --device cuda --dtype bfloat16 --tiles 256 --batch-size 64 --slide-tiles 256
run prepare       45 $PY benchmarks/bench_prepare.py --device cuda --tiles 1024 --large-tiles 256 --batch-size 64
run gpu_tests     60 $PY -m pytest -q -m gpu
read -r -d '' GIGAPIXEL_PY <<'PYEOF'
import json, sys, time
import torch
from zoomldm import ZoomLDMPipeline
from zoomldm.sampling.plan import plan_large
out_dir, size, region = sys.argv[1], 8192, (0, 0, 2048, 2048)
pipe = ZoomLDMPipeline.from_config("brca").to(device="cuda", dtype="float16").optimize()
grid = torch.randn(pipe.config.ssl_channels, 32, 32, generator=torch.Generator().manual_seed(0))
for schedule in ("official", "fast"):
    request = dict(size=size, region=region, schedule=schedule, tile_batch=64)
    plan = plan_large(pipe, **request)
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = pipe.generate_large(reference=grid, out=f"{out_dir}/gigapixel_{schedule}.tif", progress=False, **request)
    torch.cuda.synchronize()
    seconds = result.metrics["seconds"]["total"]  # the 20x stage over the region (stage 1 is per image)
    gigapixels = region[2] * region[3] / 1e9
    print(json.dumps({
        "schedule": schedule, "region_px": region[2:], "tiles": result.metrics["computed_tiles"],
        "stage_seconds": round(seconds, 1), "wall_seconds": round(time.perf_counter() - start, 1),
        "s_per_gigapixel": round(seconds / gigapixels), "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "plan_peak_gpu_gib": round(plan.peak_gpu_bytes / 2**30, 2), "plan_seconds_whole_request": round(plan.seconds),
        "unet_forwards": result.metrics["unet_forwards"], "vq_passes": result.metrics["vq_passes"],
        "constraint_psnr": result.metrics["output"]["psnr"]}), flush=True)
PYEOF
run gigapixel    480 $PY -c "$GIGAPIXEL_PY" "$OUT"
run explorer     120 $PY benchmarks/bench_explorer.py --device cuda --preset brca --schedule fast
