"""Session fixtures of the integrations suite: each real AutoRound export is made once, lazily.

At the end of the session the measured errors are printed (and written as JSON to
``$QUANTLINEAR_INTEGRATIONS_REPORT`` when that is set).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from . import helpers


class Exports:
    """Checkpoints made once per session, on first use; a failed export fails every user of it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, Any] = {}

    def get(self, key: str, make: Callable[[Path], Any]) -> Any:
        if key not in self._made:
            try:
                self._made[key] = helpers.timed(f"export:{key}", lambda: make(self.root / key))
            except Exception as e:  # noqa: BLE001 - remembered, re-raised for every user
                self._made[key] = e
        got = self._made[key]
        if isinstance(got, Exception):
            raise got
        return got


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> Exports:
    return Exports(tmp_path_factory.mktemp("integrations"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not helpers.RESULTS:
        return
    tr = terminalreporter
    tr.section("quantlinear integrations: measured errors (max|diff| / max|ref|) and times")
    for key in sorted(helpers.RESULTS):
        vals = ", ".join(f"{k}={v:.1e}" if isinstance(v, float) and k != "seconds" else f"{k}={v}"
                         for k, v in sorted(helpers.RESULTS[key].items()))
        tr.write_line(f"  {key}: {vals}")
    path = os.environ.get("QUANTLINEAR_INTEGRATIONS_REPORT")
    if path:
        Path(path).write_text(json.dumps(helpers.RESULTS, indent=2, sort_keys=True, default=str))
