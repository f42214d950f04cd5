#!/usr/bin/env bash
# The GPU check, in one command on a fresh CUDA machine (H100/H200) holding a copy of the repo:
# builds stpriv_ops._C, runs the CUDA tests (the Triton kernels' full case matrix on the device, then
# every test marked `cuda`), then the benchmark tables, in at most 6 minutes: each phase has its own
# time limit (build 90 s, tests 70 + 80 s, benchmarks 70 + 50 s) so one hang cannot eat the rest,
# and a second run fits in a 15-minute device budget.
#
#   bash benchmarks/gpu_check.sh [results-dir]
#
# Results go to results-dir, else $OUT, else benchmarks/gpu_results: machine.txt, build.log,
# tests_triton.log, tests_cuda.log, bench_attention.log and bench_rest.log (pytest-benchmark's
# tables and the suites' ratio tables), their .json, and summary.txt with one line per phase.
# Exits non-zero if any phase failed.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${1:-${OUT:-benchmarks/gpu_results}}"
mkdir -p "$RESULTS"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore MPLBACKEND=Agg HYPOTHESIS_PROFILE=ci
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MAX_JOBS="${MAX_JOBS:-$(nproc)}"
unset TRITON_INTERPRET  # the kernels must run on the device, not in the interpreter
status=0

phase() {  # phase NAME SECONDS LOG COMMAND...: runs one phase, records its outcome and duration
  local name=$1 limit=$2 log=$3
  shift 3
  local start=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$RESULTS/$log" 2>&1
  local rc=$?
  tail -n 25 "$RESULTS/$log"
  printf '%-14s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$log" | tee -a "$RESULTS/summary.txt"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

: >"$RESULTS/summary.txt"
# Install only what is missing (the machine may be offline; then this step just fails loudly).
python -c "import torch, triton, pytest, pytest_benchmark, hypothesis, einops" 2>/dev/null ||
  python -m pip install -q torch triton pytest pytest-benchmark hypothesis expecttest einops ninja

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, '| cuda', torch.version.cuda, '| triton', triton.__version__, '|', torch.cuda.get_device_name())"
  git log -1 --format='commit %H %cd' 2>/dev/null
} >"$RESULTS/machine.txt" 2>&1
cat "$RESULTS/machine.txt"

phase build 90 build.log python setup.py build_ext --inplace || { echo "build failed"; exit 1; }
python -c "import stpriv_ops; assert stpriv_ops.has_ops(); print('stpriv_ops._C loaded')" || exit 1

# Kernel-level cases on the device with fixed tiles and every tile candidate (which also fills
# Triton's disk cache with the pinned configurations the benchmarks run: the kernels never
# autotune), then every `cuda` test through torch.ops.stpriv. Modules whose optional dependencies
# are missing here must not stop the CUDA tests, hence --continue-on-collection-errors.
phase tests_triton 70 tests_triton.log \
  python -m pytest -q -p no:cacheprovider -x tests/test_masked_attention_triton.py
phase tests_cuda 80 tests_cuda.log \
  python -m pytest -q -p no:cacheprovider -m cuda --continue-on-collection-errors tests/

# The attention table first (the numbers that matter most), then the other suites.
BENCH_ARGS=(-q -p no:cacheprovider --benchmark-only --benchmark-columns=median,iqr,rounds
  --benchmark-sort=name --benchmark-group-by=group)
phase bench_attention 70 bench_attention.log python -m pytest "${BENCH_ARGS[@]}" \
  --benchmark-json="$RESULTS/bench_attention.json" benchmarks/bench_masked_attention.py
phase bench_rest 50 bench_rest.log python -m pytest "${BENCH_ARGS[@]}" \
  --benchmark-json="$RESULTS/bench_rest.json" benchmarks/ --ignore=benchmarks/bench_masked_attention.py

echo "== summary"
cat "$RESULTS/machine.txt" "$RESULTS/summary.txt"
exit "$status"
