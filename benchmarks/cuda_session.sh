#!/usr/bin/env bash
# One lease of a GPU machine (see benchmarks/RESULTS.md, "CUDA"): builds the extension with
# the CUDA kernels against the machine's CUDA torch, runs tests/cuda, runs a subset of them
# under compute-sanitizer memcheck, then the GPU benchmark. Stages: build test sweep variants
# sanitize bench probe (default: build test sanitize bench; sweep = benchmarks/cuda_nm24_sweep.py
# for 2:4, variants = benchmarks/cuda_variant_sweep.py for BSR and CSR, probe =
# benchmarks/cuda_stream_probe.cu, weight-stream access patterns). Logs and results go to $OUT
# (default /tmp/sparseprune-cuda).
set -uo pipefail
OUT=${OUT:-/tmp/sparseprune-cuda}
mkdir -p "$OUT"
STAGES=${*:-build test sanitize bench}
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
for stage in $STAGES; do
  echo "== $stage $(date -u +%H:%M:%S)"
  case $stage in
    build)
      SPARSEPRUNE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} $PY setup.py build_ext --inplace \
        >"$OUT/build.log" 2>&1 || { grep -E "error|Error" "$OUT/build.log" | head -40; exit 1; }
      grep -c "warning" "$OUT/build.log" | sed 's/^/build warnings: /' ;;
    test)
      $PY -m pytest tests/cuda -q -p no:cacheprovider --maxfail=10 ${PYTEST_ARGS:-} \
        >"$OUT/tests.log" 2>&1
      echo "tests rc=$?"; tail -25 "$OUT/tests.log" ;;
    sweep)
      timeout ${SWEEP_TIMEOUT:-240} $PY benchmarks/cuda_nm24_sweep.py --out "$OUT" ${SWEEP_ARGS:-} \
        >"$OUT/sweep.log" 2>&1
      echo "sweep rc=$?"; cut -c1-400 "$OUT/sweep.log" | tail -40 ;;
    variants)
      timeout ${VARIANT_SWEEP_TIMEOUT:-240} $PY benchmarks/cuda_variant_sweep.py --out "$OUT" \
        ${VARIANT_SWEEP_ARGS:-} >"$OUT/variant_sweep.log" 2>&1
      echo "variants rc=$?"; cut -c1-400 "$OUT/variant_sweep.log" | tail -${VARIANT_TAIL:-70} ;;
    probe)
      nvcc -O3 -std=c++17 -arch=sm_90 benchmarks/cuda_stream_probe.cu -o "$OUT/probe.bin" \
        && "$OUT/probe.bin" | tee "$OUT/probe.txt"; rm -f "$OUT/probe.bin" ;;
    sanitize)
      SPARSEPRUNE_SANITIZE=1 timeout ${SANITIZE_TIMEOUT:-300} compute-sanitizer --tool memcheck \
        --error-exitcode 9 $PY -m pytest tests/cuda -q -p no:cacheprovider -x ${SANITIZE_ARGS:-} \
        >"$OUT/sanitizer.log" 2>&1
      echo "sanitizer rc=$?"; grep -E "ERROR SUMMARY|passed|failed" "$OUT/sanitizer.log" | tail -3 ;;
    bench)
      timeout ${BENCH_TIMEOUT:-600} $PY -m sparseprune.bench.cuda --out "$OUT" ${BENCH_ARGS:-} \
        >"$OUT/bench.log" 2>&1
      echo "bench rc=$?"; grep -v "^|" "$OUT/bench.log" | tail -${BENCH_TAIL:-60} ;;
  esac
done
