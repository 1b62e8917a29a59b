#!/usr/bin/env python3
"""Write an ``mmv_fp_check.py --sweep`` result into the float kernels' shipped table (``tuned/fp-sm90.json``): for each
swept (scheme, shape, M bucket) the fastest configuration measured -- ``mmv``'s candidates or what the layer runs
without it -- with every time recorded.

    python plugins/cuda/benchmarks/mmv_fp_merge.py RESULT.json [--write]
"""
import argparse, json
from pathlib import Path
from quantlinear_triton import tune as _tune
from quantlinear_triton.fp_packing import E2M1, S_E4M3, S_E8M0
from quantlinear_triton.fp_tune import FPProblem

ap = argparse.ArgumentParser()
ap.add_argument("sweep")
ap.add_argument("--write", action="store_true")
args = ap.parse_args()
path = Path("plugins/cuda/quantlinear_cuda/tuned/fp-sm90.json")
res = json.loads(Path(args.sweep).read_text())
table = json.loads(path.read_text()) if path.is_file() else {
    "arch": "sm90", "configs": {}, "device": res["device"], "version": _tune.CACHE_VERSION,
    "note": ("Float-scheme (fp16) entries measured on an H100 by plugins/cuda/benchmarks/mmv_fp_check.py --sweep: CUDA-graph "
             "device time through the per-call path (activation quantization included) over weight copies > 150 MB, "
             "merged by mmv_fp_merge.py. 'measured' lists every candidate's time in microseconds; the first is the "
             "configuration the layer runs without mmv.")}
for row in res["sweep"]:
    nv = row["scheme"] == "NVFP4"
    p = FPProblem(E2M1, S_E4M3 if nv else S_E8M0, 16 if nv else 32, 4, "float16", row["N"], row["K"])
    best_c, best_t = min(row["times"], key=lambda ct: ct[1])
    key = p.key(_tune.bucket(row["M"]))
    table["configs"][key] = {"best_us": round(best_t, 2), "config": best_c, "source": "mmv_fp_check.py --sweep",
                             "measured": [[_tune._short(c), round(t, 2)] for c, t in row["times"]]}
    print(f"{key}: {_tune._short(best_c)} {best_t:.1f} us (default {row['times'][1][1]:.1f}, without mmv {row['times'][0][1]:.1f})")
if args.write:
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
