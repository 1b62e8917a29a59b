"""One selection loop, and the report that explains it.

Candidates are walked in priority order (ties broken by name); every kernel's verdict is
recorded, including the ones that lost, so ``explain`` can always say why each candidate
was or was not chosen.  Forcing a kernel (``backend="cpu.int4pack"``) still explains a
rejection.  Results are cached per (spec without layer name, backend, registry state,
environment filters).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .devices import FAMILIES, device_family
from .errors import NoKernelError, UnknownBackendError
from .qlinear import QuantLinear
from .registry import ENV_ALLOW, ENV_DISABLE, Registry, env_patterns, matches, registry as default_registry

ENV_PRIORITY = "QUANTLINEAR_PRIORITY"


def priority_overrides(priorities: "dict[str, int] | None" = None) -> tuple[tuple[str, int], ...]:
    """User priority overrides: ``priorities=`` first, then ``QUANTLINEAR_PRIORITY="glob=int,..."``.

    Patterns match kernel names or plugin names (``"cpu.dequant=100"``, ``"myplug=5"``,
    ``"cuda.*=-1"``); the first matching pattern wins.
    """
    out = list((priorities or {}).items())
    for item in env_patterns(ENV_PRIORITY):
        pat, sep, val = item.partition("=")
        try:
            out.append((pat.strip(), int(val)))
        except ValueError:
            raise UnknownBackendError(f"{ENV_PRIORITY}: {item!r} is not 'pattern=integer'") from None
        if not sep:
            raise UnknownBackendError(f"{ENV_PRIORITY}: {item!r} is not 'pattern=integer'")
    return tuple(out)


def effective_priority(kernel: type[QuantLinear], overrides: tuple[tuple[str, int], ...]) -> int:
    plugin = kernel.name.split(".", 1)[0]
    for pat, value in overrides:
        if matches((pat,), kernel.name, plugin):
            return value
    return kernel.priority
from .spec import LayerSpec
from .verdict import Verdict


@dataclass(frozen=True)
class Candidate:
    kernel: str
    plugin: str
    priority: int
    verdict: Verdict
    chosen: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "plugin": self.plugin,
            "priority": self.priority,
            "ok": self.verdict.ok,
            "reason": self.verdict.reason,
            "chosen": self.chosen,
        }


@dataclass(frozen=True)
class Selection:
    spec: LayerSpec
    backend: str
    kernel: type[QuantLinear] | None
    candidates: tuple[Candidate, ...]
    notes: tuple[str, ...] = field(default=())

    def report(self) -> str:
        lines = [f"{self.spec.describe()}  [backend={self.backend}]"]
        if not self.candidates:
            lines.append("  (no candidate kernels)")
        for c in self.candidates:
            mark = "->" if c.chosen else ("ok" if c.verdict.ok else "no")
            why = c.verdict.reason or ("chosen" if c.chosen else "lower priority")
            lines.append(f"  {mark:2} {c.kernel:<28} prio {c.priority:>3}  {why}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.spec.name,
            "backend": self.backend,
            "kernel": self.kernel.name if self.kernel else None,
            "candidates": [c.to_dict() for c in self.candidates],
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        return self.report()


_cache: dict[tuple, Selection] = {}


def _plugin_notes(reg: Registry, names: list[str] | None = None) -> tuple[str, ...]:
    notes = []
    for r in reg.plugins():
        if names is not None and r.name not in names:
            continue
        if r.state in ("failed", "blocked"):
            notes.append(f"plugin {r.name!r} {r.state}: {r.error}")
    return tuple(notes)


def _resolve(spec: LayerSpec, backend: str, reg: Registry) -> tuple[list[type[QuantLinear]], tuple[str, ...]]:
    fam = device_family(spec.device)
    if backend == "auto":
        reg.load_for_family(fam)
        notes = list(_plugin_notes(reg))
        if reg.plugin(fam) is None and fam in FAMILIES:
            notes.append(f"no '{fam}' plugin is installed (pip install 'quantlinear[{fam}]')")
        return reg.kernels(), tuple(notes)
    if reg.plugin(backend) is not None:
        rec = reg.load(backend)
        return list(rec.kernels), _plugin_notes(reg, [backend])
    k = reg.find_kernel(backend)
    if k is not None:
        return [k], ()
    plugin = backend.split(".", 1)[0]
    if "." in backend and reg.plugin(plugin) is not None and reg.plugin(plugin).state != "loaded":
        raise NoKernelError(f"backend {backend!r}: plugin {plugin!r} {reg.plugin(plugin).state}: {reg.plugin(plugin).error}")
    known_plugins = sorted(r.name for r in reg.plugins())
    known_kernels = sorted(k.name for k in reg.kernels())
    raise UnknownBackendError(
        f"unknown backend {backend!r} for layer {spec.name!r}: use 'auto', a plugin ({', '.join(known_plugins) or 'none installed'}) "
        f"or a kernel ({', '.join(known_kernels) or 'none loaded'})"
    )


def select_kernel(
    spec: LayerSpec,
    backend: str = "auto",
    *,
    registry: Registry | None = None,
    raise_on_none: bool = True,
    priorities: dict[str, int] | None = None,
) -> Selection:
    """Choose the kernel for ``spec``; raise NoKernelError (with every reason) when none fits.

    ``priorities`` overrides kernels' declared priorities (see :func:`priority_overrides`).
    """
    reg = registry or default_registry()
    disable, allow = env_patterns(ENV_DISABLE), env_patterns(ENV_ALLOW)
    overrides = priority_overrides(priorities)
    key = (spec.key(), backend, id(reg), reg.generation, disable, allow, overrides)
    sel = _cache.get(key)
    if sel is None:
        kernels, notes = _resolve(spec, backend, reg)
        prio = {k: effective_priority(k, overrides) for k in kernels}
        ordered = sorted(kernels, key=lambda k: (-prio[k], k.name))
        verdicts = []
        for k in ordered:
            plugin = k.name.split(".", 1)[0]
            if matches(disable, k.name, plugin):
                v = Verdict.no(f"disabled by {ENV_DISABLE}={os.environ.get(ENV_DISABLE)}")
            elif allow and not matches(allow, k.name, plugin):
                v = Verdict.no(f"not allowed by {ENV_ALLOW}={os.environ.get(ENV_ALLOW)}")
            else:
                try:
                    v = k.can_implement(spec)
                except Exception as e:  # a buggy third-party check must not break selection
                    v = Verdict.no(f"can_implement raised {type(e).__name__}: {e}")
            verdicts.append((k, v))
        chosen = next((k for k, v in verdicts if v), None)
        cands = tuple(Candidate(k.name, k.name.split(".", 1)[0], prio[k], v, k is chosen) for k, v in verdicts)
        changed = [f"{k.name} {k.priority}->{prio[k]}" for k in ordered if prio[k] != k.priority]
        if changed:
            notes = tuple(notes) + (f"priorities overridden by the user: {', '.join(changed)}",)
        sel = Selection(spec.key(), backend, chosen, cands, notes)
        _cache[key] = sel
    sel = Selection(spec, sel.backend, sel.kernel, sel.candidates, sel.notes)
    if sel.kernel is None and raise_on_none:
        raise NoKernelError(f"no kernel can run layer {spec.name!r}:\n{sel.report()}")
    return sel


def clear_cache() -> None:
    _cache.clear()


def explain(spec: LayerSpec, backend: str = "auto", *, registry: Registry | None = None, as_json: bool = False, priorities: dict[str, int] | None = None) -> str:
    """Every candidate for ``spec`` with its verdict and reason, as text or JSON."""
    sel = select_kernel(spec, backend, registry=registry, raise_on_none=False, priorities=priorities)
    return json.dumps(sel.to_dict(), indent=2) if as_json else sel.report()
