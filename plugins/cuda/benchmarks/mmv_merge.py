#!/usr/bin/env python3
"""Merge an ``mmv_check.py --sweep`` result into the shipped table: an ``mmv`` entry for an M bucket where its best
shape beats the kernel the layer ran before by at least ``--margin`` and differs from the default rule
(``tune.mmv_config``) or replaces an entry of the table, and the old kernel's entry where ``mmv``'s default loses to it.

    python plugins/cuda/benchmarks/mmv_merge.py results/h100-mmv-sweep-....json [--margin 0.03] [--write]
"""
import argparse, dataclasses, json, sys
from pathlib import Path
from quantlinear_cuda import tune
from quantlinear_cuda.device import DeviceProps

ap = argparse.ArgumentParser()
ap.add_argument("sweep")
ap.add_argument("--margin", type=float, default=0.03)
ap.add_argument("--write", action="store_true")
args = ap.parse_args()
path = Path("plugins/cuda/quantlinear_cuda/tuned/sm90.json")
table = json.loads(path.read_text())
res = json.loads(Path(args.sweep).read_text())
H100 = DeviceProps(res["device"], (9, 0), sm_count=132)
OLD = dataclasses.replace(H100, capability=(7, 5))
changed = []
for row in res["sweep"]:
    p = tune.Problem(4, 32, 128, False, "float16", row["N"], row["K"])
    b = tune.bucket(row["M"])
    if b == 1:
        continue  # the paired GEMV stays (mmv measured 0.84-1.00x of it)
    key = p.key(b)
    name, best = min(row["mmv"].items(), key=lambda kv: kv[1])
    R, w = name.rstrip("p").split("x")
    cfg_best = {"kernel": "mmv", "R": int(R), "warps": int(w), "pf": name.endswith("p")}
    default = tune.default_config(p, row["M"], H100)
    measured = [[tune._tune._short(dict(kernel="mmv", R=int(k.rstrip("p").split("x")[0]), warps=int(k.rstrip("p").split("x")[1]),
                                        pf=k.endswith("p"))), round(v, 2)] for k, v in row["mmv"].items()]
    measured.append([row["old_cfg"], round(row["old"], 2)])
    if best < row["old"] * (1 - args.margin):
        if cfg_best != default or key in table["configs"]:  # (a table entry would shadow the default rule)
            table["configs"][key] = {"best_us": round(best, 2), "config": cfg_best, "measured": measured,
                                     "source": "mmv_check.py --sweep"}
            changed.append(f"{key}: mmv {name} {best:.1f} us (was {row['old_cfg']} {row['old']:.1f})")
    elif default["kernel"] == "mmv":  # mmv's default is not measurably faster here: keep the old kernel
        old = tune.default_config(p, row["M"], OLD)
        table["configs"][key] = {"best_us": round(row["old"], 2), "config": old, "measured": measured,
                                 "source": "mmv_check.py --sweep"}
        changed.append(f"{key}: keeps {row['old_cfg']} {row['old']:.1f} us (mmv best {name} {best:.1f})")
print("\n".join(changed) or "no change")
if args.write:
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
