#!/usr/bin/env bash
# GPU check of the GGUF kernels (issue #9, cuda.triton_gguf): tests, a restricted benchmark, then a
# timing of the kernel variants (gguf_variants.py), a short tuning run of Q4_K if time is left.  Fits in
# ~5 minutes on an H100: every stage runs under a deadline and says when it was cut.
#
#   OUT=/some/dir bash plugins/cuda/benchmarks/gguf_device_check.sh
#
# after: pip install --no-deps --no-build-isolation -e . -e plugins/triton -e plugins/cuda
# (no gguf package needed: random valid blocks and the core's torch dequantization are the reference)
# Writes into $OUT: env.txt, pytest_{paths,gpu,plugin}.log, bench_gguf.{json,txt}, gguf_variants.{json,txt}, tune_q4k.{json,txt},
# gguf-tune-<arch>.json (the measured table, to ship as quantlinear_cuda/tuned/gguf-<arch>.json), summary.txt.
set -u
cd "$(dirname "$0")/../../.."
OUT=${OUT:-./gguf-device-check}
mkdir -p "$OUT"
PY=${PYTHON:-python}
START=$(date +%s)
left() { local l=$(( $1 - ($(date +%s) - START) )); [ "$l" -gt 1 ] && echo "$l" || echo 1; }  # seconds until the deadline at $1 s

# Deterministic launch tables, no tuning, no user caches.
export QUANTLINEAR_CUDA_GGUF_TUNE=0 QUANTLINEAR_CUDA_GGUF_TUNE_CACHE=off QUANTLINEAR_CUDA_TUNE=0 QUANTLINEAR_CUDA_TUNE_CACHE=off

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } \
  > "$OUT/env.txt" 2>&1
head -3 "$OUT/env.txt"

# 1. Tests (deadline 120 s).  Three processes at once: Triton compilation is CPU-bound.
#    paths: every type x fp16/bf16 x GEMV / dot / large dot / dequantize-then-cuBLAS vs the fp32 reference.
#    gpu:   fp32, bit-exact dequantization, default dispatch, CUDA graphs, torch.compile, every tuning candidate.
#    plugin: the conformance kit (LayerSpec-built layers, bf16 included), the custom op, selection reasons.
run_tests() {
  local name=$1; shift
  timeout "$(left 120)" "$PY" -m pytest -q -p no:cacheprovider -rs "$@" > "$OUT/pytest_$name.log" 2>&1
  local rc=$?
  echo "pytest $name: rc=$rc ($([ $rc = 124 ] && echo 'cut at the deadline' || tail -1 "$OUT/pytest_$name.log"))"
}
run_tests paths plugins/cuda/tests/test_cuda_gguf_gpu.py -k every_type_every_path &
run_tests gpu plugins/cuda/tests/test_cuda_gguf_gpu.py -k "not every_type_every_path" &
run_tests plugin plugins/cuda/tests/test_cuda_gguf.py plugins/triton/tests/test_triton_gguf_kernels.py &
wait

# 2. Benchmark (deadline 180 s): Q4_K/Q5_K/Q6_K/Q8_0 and cuBLAS fp16 at the two shapes of the issue's target.
timeout "$(left 180)" "$PY" plugins/cuda/benchmarks/bench_gguf.py --shapes 4096x14336,8192x28672 --ms 1,16,256,4096 \
  --iters 20 --out "$OUT/bench_gguf.json" > "$OUT/bench_gguf.txt" 2>&1
echo "bench: rc=$? ($(tail -1 "$OUT/bench_gguf.txt"))"

# 2b. Variants (deadline 255 s; the script stops adding rows after 55 s): gemv vs gemv16 (+ options) at M=1,
#     dot vs gemv16 with several x rows at M=16, dot vs dqmm at M=64/256; Q4_K/Q6_K/Q8_0 at the same shapes.
timeout "$(left 255)" "$PY" plugins/cuda/benchmarks/gguf_variants.py --deadline 55 --out "$OUT/gguf_variants.json" \
  > "$OUT/gguf_variants.txt" 2>&1
echo "variants: rc=$? ($(tail -1 "$OUT/gguf_variants.txt"))"

# 3. Tuning (deadline 275 s): Q4_K decode and M=16 at the same shapes, measured table written to $OUT.
ARCH=$($PY -c "import torch; p = torch.cuda.get_device_capability(); print(f'sm{p[0]}{p[1]}')" 2>/dev/null || echo sm90)
timeout "$(left 275)" "$PY" plugins/cuda/benchmarks/bench_gguf.py --types Q4_K --shapes 4096x14336,8192x28672 --ms 1,16 \
  --kernels triton --iters 20 --tune --tune-cache "$OUT/gguf-tune-$ARCH.json" --out "$OUT/tune_q4k.json" > "$OUT/tune_q4k.txt" 2>&1
echo "tune: rc=$? ($(tail -1 "$OUT/tune_q4k.txt"))"

{ cat "$OUT/env.txt"; for f in "$OUT"/pytest_*.log; do echo "== $f"; tail -3 "$f"; done
  echo "== bench (fraction of copy bandwidth on the file's bytes; target Q4_K M=1 >= 70%)"
  sed -n '/^type /,$p' "$OUT/bench_gguf.txt"
  echo "== variants (gemv16: paired-fp16 GEMV; MR: x rows per program; dqmm: dequantize + cuBLAS)"; cat "$OUT/gguf_variants.txt"
  echo "== tuned Q4_K"; sed -n '/^type /,$p' "$OUT/tune_q4k.txt"; } > "$OUT/summary.txt" 2>&1
echo "total $(( $(date +%s) - START )) s; summary in $OUT/summary.txt"
