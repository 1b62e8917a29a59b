#!/usr/bin/env bash
# The GPU checks of one session, in stages that each fit a device call (< 10 minutes):
#
#   OUT=DIR bash plugins/cuda/benchmarks/gpu_checks.sh int,fp,scaled_mm     # first call
#   OUT=DIR bash plugins/cuda/benchmarks/gpu_checks.sh sm_variants,gguf,bench_w4  # second call
#
# Installs the core and the CUDA plugins editable (offline), runs each stage's script with its
# own deadline, and packs every stage's files into $OUT/<stage>.tgz (the summaries are printed).
set -u
cd "$(dirname "$0")/../../.."
OUT=${OUT:-./gpu-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python -m pip install -q --no-deps --no-build-isolation -e . -e plugins/triton -e plugins/cuda > "$OUT/install.log" 2>&1 || { tail "$OUT/install.log"; exit 1; }
W=$(mktemp -d)
for stage in ${1//,/ }; do
  d="$W/$stage"; mkdir -p "$d"; t0=$(date +%s)
  echo "=== $stage"
  case $stage in
    gputests)  # the GPU test files, three processes at once (Triton compiles on the CPU); benchmarks come after
         ( timeout ${T_TESTS:-200} python -m pytest -q -p no:cacheprovider -rs plugins/cuda/tests/test_cuda_gpu.py plugins/cuda/tests/test_cuda_scaled_mm_gpu.py > "$d/pytest_int_sm.log" 2>&1 ) &
         ( timeout ${T_TESTS:-200} python -m pytest -q -p no:cacheprovider -rs plugins/cuda/tests/test_cuda_fp_gpu.py > "$d/pytest_fp.log" 2>&1 ) &
         ( timeout ${T_TESTS:-200} python -m pytest -q -p no:cacheprovider -rs plugins/cuda/tests/test_cuda_gguf_gpu.py > "$d/pytest_gguf.log" 2>&1 ) &
         wait; for f in "$d"/pytest_*.log; do echo "$f: $(tail -1 "$f")"; grep -E "^(FAILED|ERROR)" "$f" | head -8; done ;;
    int2) timeout ${T_INT:-200} python plugins/cuda/benchmarks/int_perf.py --out "$d" --stages check,eager 2>&1 | tail -60 ;;
    fpv) timeout ${T_FPV:-120} python plugins/cuda/benchmarks/fp_variants.py "$d/fp_variants.json" 2>&1 | tail -70 ;;
    ggv) timeout ${T_GGV:-120} python plugins/cuda/benchmarks/gguf_variants.py --out "$d/gguf_variants.json" 2>&1 | tail -70 ;;
    sm2) timeout ${T_SM:-120} python plugins/cuda/benchmarks/scaled_mm_device_check.py "$d" 2>&1 | tail -45 ;;
    int) python plugins/cuda/benchmarks/int_perf.py --out "$d" --stages check,eager 2>&1 | tail -40
         python -m pytest -q -p no:cacheprovider plugins/cuda/tests/test_cuda_gpu.py > "$d/pytest_int_gpu.log" 2>&1; tail -3 "$d/pytest_int_gpu.log" ;;
    fp) OUT="$d" bash plugins/cuda/benchmarks/fp_device_check.sh 2>&1 | tail -80 ;;
    scaled_mm) python -m pytest -q -p no:cacheprovider plugins/cuda/tests/test_cuda_scaled_mm_gpu.py > "$d/pytest.log" 2>&1; tail -3 "$d/pytest.log"
               timeout 150 python plugins/cuda/benchmarks/scaled_mm_device_check.py "$d" 2>&1 | tail -50 ;;
    sm_variants) timeout 120 python plugins/cuda/benchmarks/scaled_mm_variants.py "$d" 2>&1 | tail -80 ;;
    gguf) OUT="$d" bash plugins/cuda/benchmarks/gguf_device_check.sh 2>&1 | tail -5; cat "$d/summary.txt" | tail -60 ;;
    tests) timeout 240 python -m pytest -q -p no:cacheprovider -rs plugins/cuda/tests plugins/triton/tests > "$d/pytest_all.log" 2>&1; tail -25 "$d/pytest_all.log" ;;
    peers)  # the peer packages as wheels (carry .whl: gemlite, auto-round for auto_round_extension), then the full W4A16 grid
         python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > "$d/pip.log" 2>&1
         PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} timeout ${T_PEERS:-420} python -m quantlinear bench --device cuda --scheme W4A16 \
                --shapes ${SHAPES:-4096x4096,4096x14336,14336x4096,8192x28672,28672x8192,3072x12288} --m ${MS:-1,4,16,64,256,1024,4096} \
                --dtype ${DT:-float16} --iters 20 --out "$d/w4_full.json" --plot "$d/w4_full.png" > "$d/w4_full.txt" 2>&1; tail -120 "$d/w4_full.txt" ;;
    bench_w4) timeout ${T_W4:-200} python -m quantlinear bench --device cuda --scheme W4A16 --shapes 4096x14336,8192x28672 \
                --m 1,16,256,4096 --iters 20 --out "$d/w4.json" > "$d/w4.txt" 2>&1; tail -60 "$d/w4.txt" ;;
  esac
  echo "--- $stage: $(( $(date +%s) - t0 )) s"
  tar czf "$OUT/$stage.tgz" -C "$W" "$stage"
done
