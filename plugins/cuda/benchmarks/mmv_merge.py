#!/usr/bin/env python3
"""Merge an ``mmv_check.py --sweep`` result into the shipped table: for each swept (shape, M bucket) the fastest
configuration measured -- ``mmv``'s candidates or the kernel the layer ran before -- with every time recorded, as
``int_perf.py --stages gtune`` writes its entries.  :func:`merge` also serves ``mmv_fp_merge.py``.

    python plugins/cuda/benchmarks/mmv_merge.py RESULT.json [--write]
"""
import argparse, json
from pathlib import Path
from typing import Callable


def merge(path: Path, rows: list, key_of: Callable[[dict], str], source: str, describe: Callable[[dict, dict], str],
          new_table: dict | None = None, write: bool = False) -> dict:
    """Each sweep row's fastest configuration into the table at ``path`` (``new_table`` where there is none yet) under
    ``key_of(row)``, with every measured time; an entry another source wrote is kept under ``"replaced"`` (and one an
    earlier merge of this source replaced stays there).  Prints a line per row, ``describe(row, old entry)`` at its end."""
    from quantlinear_triton.tune import _short

    table = json.loads(path.read_text()) if path.is_file() else new_table
    for row in rows:
        best_c, best_t = min(row["times"], key=lambda ct: ct[1])
        key = key_of(row)
        old = table["configs"].get(key, {})
        entry = {"best_us": round(best_t, 2), "config": best_c, "source": source,
                 "measured": [[_short(c), round(t, 2)] for c, t in row["times"]]}
        if old and old.get("source") != source:  # the entry this sweep replaces, for the record
            entry["replaced"] = {k: old[k] for k in ("config", "best_us", "source") if k in old}
        elif "replaced" in old:
            entry["replaced"] = old["replaced"]
        table["configs"][key] = entry
        print(f"{key}: {_short(best_c)} {best_t:.1f} us{describe(row, old)}")
    if write:
        path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return table


def main() -> None:
    from quantlinear_cuda import tune
    from quantlinear_triton.tune import _short

    ap = argparse.ArgumentParser()
    ap.add_argument("sweep")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    # (M = 1 too: the sweep's first time is the table's gemv16 entry, so mmv wins only if faster)
    merge(Path("plugins/cuda/quantlinear_cuda/tuned/sm90.json"), json.loads(Path(args.sweep).read_text())["sweep"],
          lambda row: tune.Problem(row.get("bits", 4), 32, 128, False, row.get("dtype", "float16"), row["N"], row["K"]).key(
              tune.bucket(row["M"])),
          "mmv_check.py --sweep", lambda row, old: f" (was {_short(old['config'])})" if old.get("config") else "",
          write=args.write)


if __name__ == "__main__":
    main()
