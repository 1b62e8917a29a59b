#!/usr/bin/env python3
"""Write an ``mmv_fp_check.py --sweep`` result into the float kernels' shipped table (``tuned/fp-sm90.json``): for each
swept (scheme, shape, M bucket) the fastest configuration measured -- ``mmv``'s candidates or what the layer runs
without it -- with every time recorded (``mmv_merge.merge``).

    python plugins/cuda/benchmarks/mmv_fp_merge.py RESULT.json [--write]
"""
import argparse, json, sys
from pathlib import Path
sys.path.insert(0, "plugins/cuda/benchmarks")
from mmv_merge import merge
from quantlinear_triton import tune as _tune
from quantlinear_triton.fp_packing import E2M1, S_E4M3, S_E8M0
from quantlinear_triton.fp_tune import FPProblem


def key_of(row: dict) -> str:
    nv = row["scheme"] == "NVFP4"
    p = FPProblem(E2M1, S_E4M3 if nv else S_E8M0, 16 if nv else 32, 4, "float16", row["N"], row["K"])
    return p.key(_tune.bucket(row["M"]))


ap = argparse.ArgumentParser()
ap.add_argument("sweep")
ap.add_argument("--write", action="store_true")
args = ap.parse_args()
res = json.loads(Path(args.sweep).read_text())
merge(Path("plugins/cuda/quantlinear_cuda/tuned/fp-sm90.json"), res["sweep"], key_of, "mmv_fp_check.py --sweep",
      lambda row, old: f" (default {row['times'][1][1]:.1f}, without mmv {row['times'][0][1]:.1f})",
      new_table={"arch": "sm90", "configs": {}, "device": res["device"], "version": _tune.CACHE_VERSION,
                 "note": ("Float-scheme (fp16) entries measured on an H100 by plugins/cuda/benchmarks/mmv_fp_check.py "
                          "--sweep: CUDA-graph device time through the per-call path (activation quantization included) "
                          "over weight copies > 150 MB, merged by mmv_fp_merge.py. 'measured' lists every candidate's "
                          "time in microseconds; the first is the configuration the layer runs without mmv.")},
      write=args.write)
