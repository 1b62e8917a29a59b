"""Progress reporting for long work (loading, repacking, benchmarks), without a hard tqdm dependency."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """A byte- or item-counting progress bar: tqdm when installed, a plain stderr line otherwise."""

    def __init__(self, total: float, desc: str, *, enabled: bool = True, unit: str = "B") -> None:
        self.total, self.desc, self.enabled, self.unit = total, desc, enabled, unit
        self.n = 0.0
        self._bar: Any = None
        self._last = 0.0
        self._t0 = time.perf_counter()
        if enabled:
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False, file=sys.stderr)
            except ImportError:
                self._bar = None

    def update(self, n: float, postfix: str | None = None) -> None:
        self.n += n
        if not self.enabled:
            return
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last > 0.5 or self.n >= self.total:
            self._last = now
            pct = 100.0 * self.n / self.total if self.total else 100.0
            sys.stderr.write(f"\r{self.desc}: {pct:5.1f}% {postfix or ''}".ljust(80))
            sys.stderr.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write(f"\r{self.desc}: done in {time.perf_counter() - self._t0:.1f}s".ljust(80) + "\n")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
