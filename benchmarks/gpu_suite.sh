#!/usr/bin/env bash
# The GPU checks in one go, for a machine with a CUDA torch (and triton) already installed:
#   build pygpt against that torch, run the tests marked gpu, then every kernel benchmark and the generation
#   benchmark. Logs go to $OUT (default out/gpu). Usage, from the repository root:
#     OUT=/path/to/logs bash benchmarks/gpu_suite.sh
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$repo/out/gpu}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

echo "== build" | tee "$out/suite.log"
if ! (cd "$repo" && $py -m pip install --no-build-isolation --no-deps . > "$out/build.log" 2>&1); then
  tail -40 "$out/build.log" | tee -a "$out/suite.log"
  exit 1
fi
cd /tmp  # import the installed package, not the source tree
$py -m pygpt.cli info 2>&1 | tee -a "$out/suite.log"

echo "== gpu tests" | tee -a "$out/suite.log"
$py -m pytest "$repo/tests" -m gpu -q -p no:cacheprovider -x 2>&1 | tail -30 | tee -a "$out/suite.log"

for bench in bench_rotary bench_rope_attention bench_sample; do
  if [ -f "$repo/benchmarks/$bench.py" ]; then
    echo "== $bench" | tee -a "$out/suite.log"
    $py "$repo/benchmarks/$bench.py" 2>&1 | tee -a "$out/suite.log"
  fi
done
echo "== generate" | tee -a "$out/suite.log"
$py -m pygpt.cli bench generate 2>&1 | tee -a "$out/suite.log"

# HEAVY=1: train the heavy preset with the fused kernels and with the Torch reference path (same seed), for the
# full-val / time-to-best comparison of the attention issue. About 2 x 3-5 minutes on an H100.
if [ "${HEAVY:-0}" = 1 ]; then
  data=${PYGPT_DATA:-$repo/../shared/data/tinyshakespeare.txt}
  for backend in auto reference; do
    echo "== heavy, PYGPT_BACKEND=$backend" | tee -a "$out/suite.log"
    PYGPT_BACKEND=$backend $py -m pygpt.cli train --config heavy --data "$data" --out "$out/heavy-$backend" \
      --no-progress --set log_dir="$out/logs" 2>&1 | tail -4 | tee -a "$out/suite.log"
  done
fi
