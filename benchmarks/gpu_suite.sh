#!/usr/bin/env bash
# The GPU checks, for a machine with a CUDA torch (and triton) installed, in three stages sized for a lent GPU
# machine (10 minutes a command). 15 minutes of device time a session, the machine's start included, fit one
# stage: run kernels first, heavy in a later session (or right after, where the budget allows: the second call
# finds the build of the first on a still-warm machine and skips it):
#   kernels    build pygpt against that torch; the kernels' test files (GPU tests and compiled Triton tests)
#              spread over pytest-xdist workers (at most TESTS_LIMIT, 300 s) while the benchmarks' kernels
#              compile into Triton's cache; every kernel benchmark
#              (Triton and CUDA C++ backends), the GMM benchmark and scaling curve, generation speed of the lite
#              model (without the torch.compile modes, which the heavy stage times)
#   heavy      train the heavy preset with the fused kernels, then time generation with that model in every
#              mode (no cache, cache, CUDA graph, each torch.compile'd too)
#   heavy-ref  train the heavy preset again on the Torch reference path (same seed): with heavy's log, the
#              fused-vs-reference comparison of the attention issue
#   tiles      time every candidate tile of the Triton attention kernels (fwd, dkdv, dq) at the attention issue's
#              shapes against the tiles in kernels/rope_attention.py (benchmarks/sweep_attention_tiles.py), once
#              the kernels stage has shown what they reach
#   tests, bench  kernels in two halves, for a second call when the first ran out of time (a call on a still-warm
#              machine skips the build and every step that succeeded there before - see step(); without the warm
#              cache the benchmarks' first runs include compiling)
#   wheel      (alone, on the dev machine) build the wheel into .prebuilt for the GPU machine: see wheel() below;
#              carried there, the build stage installs it instead of compiling for a minute of device time
# Usage, from the repository root:
#   OUT=/path/to/logs STAGES=kernels bash benchmarks/gpu_suite.sh
#   OUT=/path/to/logs STAGES=heavy bash benchmarks/gpu_suite.sh
#   OUT=/path/to/logs STAGES=heavy-ref bash benchmarks/gpu_suite.sh
# Text logs only go to $OUT (one file per stage plus suite.log, the summary; the device tool brings back at
# most 8 files); checkpoints and tensorboard logs go to $WORK (default /tmp/pygpt-gpu). The heavy stage reads
# Tiny Shakespeare from $PYGPT_DATA, else data/tinyshakespeare.txt in the checkout (git-ignored: copy it there
# from ../shared/data and carry `data` to the device machine, where ../shared does not travel).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$repo/out/gpu}
work=${WORK:-/tmp/pygpt-gpu}
stages=${STAGES:-kernels heavy heavy-ref}
data=${PYGPT_DATA:-$repo/data/tinyshakespeare.txt}
py=${PYTHON:-python3}
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$work/triton-cache}  # shared by both stages and every process
summary="$out/suite.log"
status=0  # the exit status: 1 when a test run failed (the benchmarks run on regardless)

note() { echo "$*" | tee -a "$summary"; }

# step LOG LIMIT_S TITLE CMD...: run CMD with a time limit, its output appended to LOG; the tail goes to the summary.
# A step that succeeded is marked done for these sources ($STAMP, set by build) in $WORK, so a second call on a
# still-warm machine (its $OUT starts empty) goes on from the first step not done; RERUN=1 repeats every step.
step() {
  local log=$1 limit=$2 title=$3
  shift 3
  local marker
  marker="$work/done/${STAMP:-unbuilt}/$(echo "$title" | sha256sum | cut -c1-16)"
  if [ -f "$marker" ] && [ "${RERUN:-0}" != 1 ]; then
    note "== $title: done by an earlier call on this machine, for these sources (RERUN=1 repeats it)"
    return 0
  fi
  note "== $title"
  local start=$SECONDS before
  before=$(stat -c %s "$log" 2>/dev/null || echo 0)
  timeout "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  tail -c +"$((before + 1))" "$log" | tail -n "${TAIL:-14}" | tee -a "$summary"
  note "   ($title: exit $rc, $((SECONDS - start)) s)"
  echo >> "$log"
  if [ "$rc" -eq 0 ]; then
    mkdir -p "$(dirname "$marker")" && touch "$marker"
  fi
}

# Hashes of sources (the device's copy of the tree may have no .git: hash the files themselves): tree_stamp of
# everything a build installs, native_stamp of what the compiled extension is built from.
stamp_of() {
  (cd "$repo" && find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z \
   | xargs -0 sha256sum | sha256sum | cut -c1-16)
}
tree_stamp() { stamp_of csrc kernels pygpt CMakeLists.txt pyproject.toml; }
native_stamp() { stamp_of csrc CMakeLists.txt pyproject.toml; }

# wheel: build the wheel here, for a GPU machine that should not spend its time compiling: run with a python
# holding the GPU machine's torch and Python version (for the lent machines torch 2.11.0 on Python 3.12,
# e.g. `python3.12 -m venv /tmp/v && /tmp/v/bin/pip install torch==2.11.0 scikit-build-core pybind11 ninja
# numpy`), with nvcc on PATH; then carry .prebuilt to that machine. build() installs it there when the sources
# are the same and it loads with its CUDA kernels, and builds from source otherwise.
wheel() {
  rm -rf "$repo/.prebuilt" && mkdir -p "$repo/.prebuilt"
  export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
  if ! (cd "$repo" && $py -m pip wheel --no-build-isolation --no-deps -C cmake.define.PYGPT_CUDA=ON \
        -w .prebuilt . > "$out/wheel.log" 2>&1); then
    tail -40 "$out/wheel.log"
    exit 1
  fi
  native_stamp > "$repo/.prebuilt/stamp"
  note "wheel: $(ls "$repo"/.prebuilt/*.whl) for native sources $(cat "$repo/.prebuilt/stamp"), built against" \
       "$($py -c 'import sys, torch; print("torch", torch.__version__, "on Python", sys.version.split()[0])')"
}

# install_prebuilt: install .prebuilt's wheel if its extension was built from these native sources, with this
# tree's Python files over the wheel's (they may have changed since: a Python-only change needs no rebuild), and
# keep it only if pygpt._C then loads against this torch with its CUDA kernels (else the caller builds here).
install_prebuilt() {
  local wheels=("$repo"/.prebuilt/pygpt-*.whl) native site
  native=$(native_stamp)
  if [ ! -f "${wheels[0]}" ] || [ "$(cat "$repo/.prebuilt/stamp" 2>/dev/null)" != "$native" ]; then
    echo "no wheel in .prebuilt, or built from other native sources ($(cat "$repo/.prebuilt/stamp" 2>/dev/null)," \
      "not $native)" > "$out/build.log"
    return 1
  fi
  $py -m pip install --no-deps --force-reinstall "${wheels[0]}" > "$out/build.log" 2>&1 || return 1
  site=$(cd /tmp && $py -c "import os, pygpt; print(os.path.dirname(pygpt.__file__))" 2>> "$out/build.log") || return 1
  cp -r "$repo/pygpt/." "$site/" && cp -r "$repo/kernels/." "$site/kernels/" || return 1
  (cd /tmp && $py -c "import sys; from pygpt.ops._library import extension, extension_status
ext = extension(); print('pygpt._C', extension_status())
sys.exit(0 if ext is not None and ext.built_with_cuda() else 1)") >> "$out/build.log" 2>&1
}

build() {
  # Skip the build when these exact sources are installed already (a second call on a warm machine).
  local stamp
  stamp=$(tree_stamp)
  STAMP=$stamp  # (global: step's done-markers)
  if [ -f "$work/build.stamp" ] && [ "$(cat "$work/build.stamp")" = "$stamp" ] && (cd /tmp && $py -c "import pygpt._C"); then
    note "== build: this tree is installed already ($stamp)"
    return 0
  fi
  local start=$SECONDS
  if install_prebuilt; then
    note "== build: installed the carried wheel of these native sources, with this tree's Python files" \
         "($((SECONDS - start)) s)"
    echo "$stamp" > "$work/build.stamp"
    return 0
  elif [ -d "$repo/.prebuilt" ]; then
    tail -5 "$out/build.log" 2>/dev/null | tee -a "$summary"
    note "   the carried wheel in .prebuilt is not for these native sources or did not load (above); building here"
  fi
  note "== build"
  # CUDA C++ kernels ON, so a missing nvcc fails loudly instead of quietly building without them (whose tests
  # would then skip and whose benchmarks would time Triton); if that build fails, say so and build without them.
  export CUDACXX=${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
  if ! (cd "$repo" && $py -m pip install --no-build-isolation --no-deps -C cmake.define.PYGPT_CUDA=ON . \
        > "$out/build.log" 2>&1); then
    tail -20 "$out/build.log" | tee -a "$summary"
    note "   the build with the CUDA C++ kernels failed (above); building without them"
    if ! (cd "$repo" && $py -m pip install --no-build-isolation --no-deps -C cmake.define.PYGPT_CUDA=OFF . \
          >> "$out/build.log" 2>&1); then
      tail -40 "$out/build.log" | tee -a "$summary"
      exit 1
    fi
  fi
  echo "$stamp" > "$work/build.stamp"
  note "   (build: $((SECONDS - start)) s)"
}

# The kernels' test files, whole (on CUDA their Triton tests run compiled, not interpreted). Most of their time is
# Triton compiling kernels, one at a time in a process, so they are spread over many processes: with pytest-xdist
# (on the GPU machines' image) one run over TEST_WORKERS workers, test by test, each result on its own line as it
# comes (a run stopped at its limit keeps what it printed); without it one pytest per file, all at once.
GPU_TEST_FILES=${GPU_TEST_FILES:-test_rope_attention test_kv_cache test_rotary test_sampling test_engine test_fused_linear test_gmm_gpu}

gpu_tests() {
  local log=$1 start=$SECONDS files paths rc
  read -r -a files <<< "$GPU_TEST_FILES"
  paths=("${files[@]/#/$repo/tests/}")
  paths=("${paths[@]/%/.py}")
  if $py -c "import xdist" 2>/dev/null; then
    local per_test=()
    $py -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout "${TEST_TIMEOUT:-240}")
    note "== gpu tests: ${files[*]} (pytest-xdist, ${TEST_WORKERS:-12} workers)"
    timeout "${TESTS_LIMIT:-300}" $py -m pytest "${paths[@]}" -v -p no:cacheprovider -n "${TEST_WORKERS:-12}" \
      "${per_test[@]}" > "$work/tests.log" 2>&1
    rc=$?
    [ "$rc" -eq 0 ] || status=1
    { echo "--- gpu tests (exit $rc)"; cat "$work/tests.log"; echo; } >> "$log"
    for f in "${files[@]}"; do  # from the per-test lines: "[gw3] [ 41%] PASSED ../repo/tests/test_x.py::test_y[...]"
      local counts=()
      for outcome in PASSED FAILED ERROR SKIPPED; do
        counts+=("$(grep -c -E "\] $outcome \S*tests/$f\.py::" "$work/tests.log") ${outcome,,}")
      done
      note "   $f: ${counts[*]}"
    done
    note "   exit $rc: $(tail -n 1 "$work/tests.log")"
    grep -E "^FAILED |^ERROR " "$work/tests.log" | head -n 25 | tee -a "$summary"
  else
    local pids=() i=0
    note "== gpu tests: ${files[*]} (one pytest per file, in parallel)"
    for f in "${files[@]}"; do
      timeout 300 $py -m pytest "$repo/tests/$f.py" -q -p no:cacheprovider > "$work/$f.log" 2>&1 &
      pids+=($!)
    done
    for f in "${files[@]}"; do
      wait "${pids[$i]}"
      rc=$?
      [ "$rc" -eq 0 ] || status=1
      i=$((i + 1))
      { echo "--- $f (exit $rc)"; cat "$work/$f.log"; echo; } >> "$log"
      note "   $f: exit $rc: $(tail -n 1 "$work/$f.log")"
    done
    local logs=("${files[@]/#/$work/}")
    grep -h -E "^(FAILED|ERROR) " "${logs[@]/%/.log}" 2>/dev/null | head -n 25 | tee -a "$summary"
  fi
  note "   (gpu tests: $((SECONDS - start)) s)"
}

kernels() {
  # Meanwhile compile the benchmarks' kernels into Triton's cache (python -m pygpt.triton_aot --warm), so that
  # their timed runs do not compile.
  $py -m pygpt.triton_aot --warm --jobs 4 > "$work/warm.log" 2>&1 &
  local warm=$!
  gpu_tests "$out/kernels.log"
  wait "$warm"
  note "== warm Triton cache: exit $?, $(tail -n 1 "$work/warm.log")"
  benches
}

benches() {
  local log="$out/kernels.log"
  for bench in bench_rotary bench_rope_attention bench_decode_attention bench_kv_cache bench_sample \
               bench_fused_linear; do
    step "$log" 120 "$bench" $py "$repo/benchmarks/$bench.py"
  done
  for bench in bench_rotary bench_kv_cache bench_sample; do  # the CUDA C++ kernels of the same ops
    step "$log" 120 "$bench --cuda-backend cuda" $py "$repo/benchmarks/$bench.py" --cuda-backend cuda
  done
  step "$log" 240 "bench_gmm (GPU vs scikit-learn on this machine's CPU, then the GPU scaling curve)" \
    $py "$repo/benchmarks/bench_gmm.py" --device cuda --scaling
  step "$log" 120 "generate, bundled lite model" $py -m pygpt.cli bench generate \
    --modes no-cache,cache,cache+graph,cache+graph-unfused
}

# heavy_train LOG TITLE BACKEND OUT_DIR: the heavy preset as is (max_iters 5000, early stopping), with a time
# limit that still scores the best checkpoint if a run is slower than expected. HEAVY_SET="key=value ..." adds
# overrides (a CPU smoke test of this script: HEAVY_SET="max_iters=20 eval_interval=10 eval_iters=2" with a small
# PYGPT_DATA).
heavy_train() {
  local log=$1 title=$2 backend=$3 dir=$4
  if [ ! -f "$data" ]; then
    note "$title: no Tiny Shakespeare at $data (set PYGPT_DATA or copy it to data/ and carry data)"
    return 1
  fi
  local train=($py -m pygpt.cli train --config heavy --data "$data" --no-progress --time-limit "${HEAVY_LIMIT:-270}"
               --set log_dir="$work/logs" --out "$dir")
  for override in ${HEAVY_SET:-}; do train+=(--set "$override"); done
  TAIL=4 step "$log" 330 "$title" env PYGPT_BACKEND="$backend" "${train[@]}"
}

heavy() {
  local log="$out/heavy.log"
  heavy_train "$log" "heavy, fused kernels" auto "$work/heavy-fused" || return 1
  TAIL=7 step "$log" 240 "generate, heavy model" $py -m pygpt.cli bench generate --checkpoint "$work/heavy-fused/best"
}

tiles() {
  step "$out/tiles.log" 480 "attention tile sweep" $py "$repo/benchmarks/sweep_attention_tiles.py" --jobs 14
}

heavy_ref() {
  heavy_train "$out/heavy-ref.log" "heavy, Torch reference path" reference "$work/heavy-reference"
}

cd /tmp  # import the installed package, not the source tree
note "gpu_suite: stages '$stages' at $(date -u +%FT%TZ)"
if [ "$stages" = wheel ]; then
  wheel
  exit 0
fi
build
$py -m pygpt.cli info 2>&1 | tee -a "$summary"
for stage in $stages; do
  case $stage in
    kernels) kernels ;;
    tests) gpu_tests "$out/kernels.log" ;;
    bench) benches ;;
    heavy) heavy ;;
    heavy-ref) heavy_ref ;;
    tiles) tiles ;;
    *) note "unknown stage '$stage' (kernels = tests + bench, heavy, heavy-ref, tiles; wheel alone)"; exit 2 ;;
  esac
done
exit "$status"
