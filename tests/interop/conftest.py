"""Session fixtures of the interop suite and its closing error table.

Every AutoRound export is made once per pytest session (lazily, in a session tmp dir) and
shared by all tests that use it.  At the end of the session the measured errors are
printed, and written as JSON to ``$QUANTLINEAR_INTEROP_REPORT`` when that is set.
"""

from __future__ import annotations

import os
import time

import pytest

from . import helpers

_T0 = time.monotonic()


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    pytest.importorskip("auto_round")
    return helpers.ExportCache(tmp_path_factory.mktemp("autoround-exports"))


def _fmt(x) -> str:
    if isinstance(x, float):
        return "0" if x == 0 else f"{x:.1e}"
    return str(x)


_COLUMNS = [
    ("ql_auto_vs_autoround", "auto~AR"),
    ("ql_dequant_vs_autoround", "deq~AR"),
    ("ql_auto_vs_exact", "auto~exact"),
    ("ql_dequant_vs_exact", "deq~exact"),
    ("autoround_vs_exact", "AR~exact"),
    ("layer_max_rel_vs_autoround_layer", "layer~ARlayer"),
    ("layer_max_abs_vs_autoround_unpack", "layer~ARunpack"),
    ("rtn_bit_exact", "RTN=="),
]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not helpers.RESULTS:
        return
    tr = terminalreporter
    tr.section("quantlinear interop: measured errors (max|diff| / max|ref|)")
    rows = [["variant", "packing", "AR backend", *[c[1] for c in _COLUMNS]]]
    for key in sorted(helpers.RESULTS):
        r = helpers.RESULTS[key]
        rows.append([key, str(r.get("packing", "")), str(r.get("autoround_backend", "")),
                     *[_fmt(r.get(c[0], "")) for c in _COLUMNS]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        tr.write_line("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    helpers.RESULTS.setdefault("_session", {})["wall_seconds"] = round(time.monotonic() - _T0, 1)
    tr.write_line(f"interop session wall time: {helpers.RESULTS['_session']['wall_seconds']} s")
    path = os.environ.get("QUANTLINEAR_INTEROP_REPORT")
    if path:
        helpers.write_report(path)
        tr.write_line(f"interop report written to {path}")
