#!/usr/bin/env bash
# GPU check of the float / microscaling kernels (issue #5, cuda.triton_fp): tests, then benchmarks.
# Fits in ~4 minutes on an H100: every stage runs under a deadline and says when it was cut.
#
#   OUT=/some/dir bash plugins/cuda/benchmarks/fp_device_check.sh
#
# after: pip install --no-deps --no-build-isolation -e . -e plugins/triton -e plugins/cuda
# Writes into $OUT: env.txt, pytest_{gpu,kernels,plugin}.log, bench_<SCHEME>.{json,txt} (+ FPW8A16_bits), summary.txt.
set -u
cd "$(dirname "$0")/../../.."
OUT=${OUT:-./fp-device-check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
START=$(date +%s)
left() { echo $(( $1 - ($(date +%s) - START) )); }  # seconds until the deadline at $1 s

# Deterministic launch tables, no tuning, no user caches (nothing of the int kernels is timed here).
export QUANTLINEAR_CUDA_FP_TUNE=0 QUANTLINEAR_CUDA_FP_TUNE_CACHE=off QUANTLINEAR_CUDA_TUNE=0 QUANTLINEAR_CUDA_TUNE_CACHE=off

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  $PY -m quantlinear doctor; } > "$OUT/env.txt" 2>&1
head -3 "$OUT/env.txt"

# 1. Tests (deadline 110 s).  Three processes at once: Triton compilation is CPU-bound.
#    gpu: every preset, fp16/bf16, GEMV / skinny dot / large tile, act-quant bit-exactness, compile, CUDA graphs.
#    kernels, plugin: the interpreter suites compiled on the GPU (bf16 included), conformance kit, custom op.
run_tests() {
  local name=$1; shift
  timeout "$(left 110)" "$PY" -m pytest -q -p no:cacheprovider -rs "$@" > "$OUT/pytest_$name.log" 2>&1
  local rc=$?
  echo "pytest $name: rc=$rc ($([ $rc = 124 ] && echo 'cut at the deadline' || tail -1 "$OUT/pytest_$name.log"))"
}
run_tests gpu plugins/cuda/tests/test_cuda_fp_gpu.py &
run_tests kernels plugins/triton/tests/test_triton_fp_kernels.py &
run_tests plugin plugins/cuda/tests/test_cuda_fp_kernels.py &
wait

# 2. Benchmarks (deadline 235 s), one scheme at a time on an otherwise idle GPU: every cuda kernel that
#    runs the scheme, cuBLAS dense fp16 (peer.cublas), dequantize-then-matmul (peer.dequant_mm), HBM floor.
for S in MXFP4 NVFP4 MXFP8 FPW8A16 FP8_STATIC; do
  t=$(left 235)
  if [ "$t" -le 10 ]; then echo "bench $S: not run (deadline)"; continue; fi
  timeout "$t" "$PY" -m quantlinear bench --device cuda --scheme "$S" --shapes 4096x14336,8192x28672 --m 1,16,256,4096 \
    --iters 10 --out "$OUT/bench_$S.json" > "$OUT/bench_$S.txt" 2>&1
  echo "bench $S: rc=$? ($(( $(date +%s) - START )) s)"
done

# 2b. If time is left: FP8 weights through the integer bit decode instead of the sm89+ hardware conversion.
t=$(left 235)
if [ "$t" -gt 30 ]; then
  QUANTLINEAR_CUDA_FP8_DECODE=bits timeout "$t" "$PY" -m quantlinear bench --device cuda --scheme FPW8A16 --kernels cuda.triton_fp \
    --shapes 4096x14336,8192x28672 --m 1,16,256,4096 --iters 10 --out "$OUT/bench_FPW8A16_bits.json" > "$OUT/bench_FPW8A16_bits.txt" 2>&1
  echo "bench FPW8A16 (bit decode): rc=$?"
fi

# 3. Summary: cuda.triton_fp against the floor and the peers, per scheme / shape / M.
"$PY" - "$OUT" > "$OUT/summary.txt" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for f in sorted(out.glob("bench_*.json")):
    rows = json.loads(f.read_text())["rows"]
    print(f"== {f.stem[6:]}")
    print(f"{'K':>6} {'N':>6} {'M':>5}  {'kernel':<22} {'us':>9} {'x floor':>8} {'x dense':>8} {'rel err':>8}")
    for r in sorted(rows, key=lambda r: (r["K"], r["N"], r["M"], r["kernel"])):
        fmt = lambda v, p: "-" if v is None else f"{v:.{p}f}"
        print(f"{r['K']:>6} {r['N']:>6} {r['M']:>5}  {r['kernel']:<22} {fmt(r.get('best_us'), 1):>9} {fmt(r.get('vs_floor'), 2):>8} "
              f"{fmt(r.get('vs_dense'), 2):>8} {('-' if r.get('max_rel_err') is None else format(r['max_rel_err'], '.1e')):>8} {r.get('note', '')[:60]}")
EOF
cat "$OUT/summary.txt"
echo "done in $(( $(date +%s) - START )) s; results in $OUT"
