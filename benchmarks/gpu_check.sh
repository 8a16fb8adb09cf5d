#!/usr/bin/env bash
# The prepared GPU session (device tool): every GPU benchmark + the GPU-marked tests, logs under $OUT.
# Each step has its own timeout so one slow benchmark cannot eat the others' time. The steps together
# need ~13 minutes, more than one device call (10 min), so run them as two calls, e.g.
#   bash benchmarks/gpu_check.sh sample joint joint_compile joint_auto        # ~8 min
#   bash benchmarks/gpu_check.sh train cdm features prepare gpu_tests         # ~5 min
# (no arguments: every step). Run from the repo root with .venv carried or the packages installed.
set -uo pipefail
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
PY=${PY:-python}
export PYTHONUNBUFFERED=1
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(sample joint joint_compile joint_auto train cdm features prepare gpu_tests)
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
