#!/usr/bin/env python3
"""Merge an ``mmv_check.py --sweep`` result into the shipped table: for each swept (shape, M bucket) the fastest
configuration measured -- ``mmv``'s candidates or the kernel the layer ran before -- with every time recorded, as
``int_perf.py --stages gtune`` writes its entries.

    python plugins/cuda/benchmarks/mmv_merge.py RESULT.json [--write]
"""
import argparse, json
from pathlib import Path
from quantlinear_cuda import tune

ap = argparse.ArgumentParser()
ap.add_argument("sweep")
ap.add_argument("--write", action="store_true")
args = ap.parse_args()
path = Path("plugins/cuda/quantlinear_cuda/tuned/sm90.json")
table = json.loads(path.read_text())
for row in json.loads(Path(args.sweep).read_text())["sweep"]:
    b = tune.bucket(row["M"])  # (M = 1 too: the sweep's first time is the table's gemv16 entry, so mmv wins only if faster)
    p = tune.Problem(4, 32, 128, False, row.get("dtype", "float16"), row["N"], row["K"])
    best_c, best_t = min(row["times"], key=lambda ct: ct[1])
    key = p.key(b)
    old = table["configs"].get(key, {})
    before = old.get("config")
    table["configs"][key] = {"best_us": round(best_t, 2), "config": best_c, "source": "mmv_check.py --sweep",
                             "measured": [[tune._tune._short(c), round(t, 2)] for c, t in row["times"]]}
    if old and old.get("source") != "mmv_check.py --sweep":  # the entry this sweep replaces, for the record
        table["configs"][key]["replaced"] = {k: old[k] for k in ("config", "best_us", "source") if k in old}
    print(f"{key}: {tune._tune._short(best_c)} {best_t:.1f} us" + (f" (was {tune._tune._short(before)})" if before else ""))
if args.write:
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
