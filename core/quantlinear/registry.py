"""Plugins, loaded lazily and in isolation, and the kernels they provide.

Entry-point metadata is read without importing anything.  A plugin is imported only when
``auto`` needs its device family, when the user names it or one of its kernels, or when
``doctor`` asks for everything.  Each import and each hook call is wrapped: a plugin that
fails becomes a report row (state ``failed`` with its error), never an exception that
breaks ``auto`` for the other plugins.  The registry is an object; tests make fresh ones.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata as md
import os
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .devices import FAMILIES
from .qlinear import QuantLinear

ENTRY_POINT_GROUP = "quantlinear.plugins"
ENV_DISABLE = "QUANTLINEAR_DISABLE"
ENV_ALLOW = "QUANTLINEAR_KERNELS"


@dataclass
class PluginRecord:
    """What the registry knows about one plugin (shown by ``quantlinear doctor``)."""

    name: str
    source: str
    distribution: str | None = None
    version: str | None = None
    state: str = "available"  # available | loaded | failed | blocked
    error: str | None = None
    kernels: list[type[QuantLinear]] = field(default_factory=list)
    obj: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "distribution": self.distribution,
            "version": self.version,
            "state": self.state,
            "error": self.error,
            "kernels": [k.name for k in self.kernels],
        }


def env_patterns(var: str) -> tuple[str, ...]:
    raw = os.environ.get(var, "")
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def matches(patterns: Iterable[str], *names: str) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


class Registry:
    """Known plugins and their kernels."""

    def __init__(self, *, entry_points: bool = True, group: str = ENTRY_POINT_GROUP) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._records: dict[str, PluginRecord] = {}
        self._entry_points: dict[str, md.EntryPoint] = {}
        self._lock = threading.RLock()
        self.generation = 0
        if entry_points:
            self._discover(group)

    # ---- discovery ---------------------------------------------------------------------------
    def _discover(self, group: str) -> None:
        try:
            eps = md.entry_points(group=group)
        except Exception as e:  # broken metadata must not break the core
            self._records["<metadata>"] = PluginRecord("<metadata>", "entry points", state="failed", error=repr(e))
            return
        for ep in sorted(eps, key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            rec = PluginRecord(
                name=ep.name,
                source=f"entry point {ep.value}",
                distribution=dist.metadata["Name"] if dist is not None else None,
                version=dist.version if dist is not None else None,
            )
            if ep.name in self._records:
                rec.state, rec.error = "failed", f"duplicate plugin name {ep.name!r} (also {self._records[ep.name].source})"
                self._records[f"{ep.name}#{ep.value}"] = rec
                continue
            self._records[ep.name] = rec
            self._entry_points[ep.name] = ep

    # ---- registration ------------------------------------------------------------------------
    def register(self, plugin: Any, name: str | None = None) -> PluginRecord:
        """Register an already-imported plugin object or module (tests, notebooks)."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        with self._lock:
            if name in self._records and self._records[name].state == "loaded":
                raise ValueError(f"a plugin named {name!r} is already loaded")
            rec = PluginRecord(name=name, source="in-process", obj=plugin)
            self._records[name] = rec
            self._entry_points.pop(name, None)
            self._activate(rec, plugin)
            return rec

    def unregister(self, name: str) -> None:
        with self._lock:
            rec = self._records.pop(name, None)
            if rec is not None and rec.obj is not None and self._pm.is_registered(rec.obj):
                self._pm.unregister(rec.obj)
            self.generation += 1

    def _activate(self, rec: PluginRecord, plugin: Any) -> None:
        self.generation += 1
        try:
            if self._pm.is_registered(plugin):
                self._pm.unregister(plugin)
            self._pm.register(plugin, name=rec.name)
            api = self._call(plugin, "quantlinear_plugin_api")
            if api is not None:
                versions = {api} if isinstance(api, int) else set(api)
                if hookspecs.PLUGIN_API_VERSION not in versions:
                    raise RuntimeError(
                        f"plugin supports quantlinear plugin API {sorted(versions)}, "
                        f"this core provides version {hookspecs.PLUGIN_API_VERSION}; upgrade one of them"
                    )
            kernels = self._call(plugin, "quantlinear_kernels") or []
            rec.kernels = self._validate_kernels(rec, kernels)
            rec.state, rec.obj = "loaded", plugin
        except Exception as e:
            rec.state = "failed"
            rec.error = f"{type(e).__name__}: {e}"
            rec.kernels = []
            rec.obj = plugin
            rec.traceback = traceback.format_exc()  # type: ignore[attr-defined]
            if self._pm.is_registered(plugin):
                self._pm.unregister(plugin)

    def _call(self, plugin: Any, hook: str, **kwargs: Any) -> Any:
        for impl in getattr(self._pm.hook, hook).get_hookimpls():
            if impl.plugin is plugin:
                return impl.function(**{a: kwargs[a] for a in impl.argnames})
        return None

    def _validate_kernels(self, rec: PluginRecord, kernels: Any) -> list[type[QuantLinear]]:
        if not isinstance(kernels, (list, tuple)):
            raise TypeError(f"quantlinear_kernels() must return a list of QuantLinear subclasses, got {type(kernels).__name__}")
        taken = {k.name: r.name for r in self._records.values() if r is not rec for k in r.kernels}
        out = []
        for k in kernels:
            if not (isinstance(k, type) and issubclass(k, QuantLinear)) or k.abstract:
                raise TypeError(f"quantlinear_kernels() returned {k!r}, which is not a concrete QuantLinear subclass")
            if k.name.split(".", 1)[0] != rec.name:
                raise TypeError(f"kernel {k.name!r} must be namespaced by its plugin: '{rec.name}.<kernel>'")
            if k.name in taken:
                raise TypeError(f"kernel {k.name!r} is already provided by plugin {taken[k.name]!r}")
            out.append(k)
        return out

    # ---- lazy loading --------------------------------------------------------------------------
    def load(self, name: str) -> PluginRecord:
        """Import (once) and activate the plugin ``name``; failures are recorded, not raised."""
        with self._lock:
            rec = self._records.get(name)
            if rec is None:
                raise KeyError(name)
            if rec.state != "available":
                return rec
            if matches(env_patterns(ENV_DISABLE), name):
                rec.state, rec.error = "blocked", f"blocked by {ENV_DISABLE}={os.environ.get(ENV_DISABLE)}"
                return rec
            ep = self._entry_points.get(name)
            try:
                plugin = ep.load()
            except BaseException as e:  # ImportError, OSError from vendor libs, SystemExit...
                if isinstance(e, KeyboardInterrupt):
                    raise
                rec.state, rec.error = "failed", f"import failed: {type(e).__name__}: {e}"
                rec.traceback = traceback.format_exc()  # type: ignore[attr-defined]
                self.generation += 1
                return rec
            self._activate(rec, plugin)
            return rec

    def load_for_family(self, family: str) -> None:
        """Load what ``auto`` needs on ``family``: that family's plugin and every third-party plugin."""
        for name in list(self._records):
            if name == family or name not in FAMILIES:
                self.load(name)

    def load_all(self) -> None:
        for name in list(self._records):
            self.load(name)

    # ---- queries ---------------------------------------------------------------------------------
    def plugins(self) -> list[PluginRecord]:
        return list(self._records.values())

    def plugin(self, name: str) -> PluginRecord | None:
        return self._records.get(name)

    def kernels(self) -> list[type[QuantLinear]]:
        """Kernels of the plugins loaded so far."""
        return [k for r in self._records.values() if r.state == "loaded" for k in r.kernels]

    def benchmark_runner(self, family: str):
        """The first loaded plugin's benchmark runner for ``family`` (hook ``quantlinear_benchmark``)."""
        for rec in self._records.values():
            if rec.state != "loaded":
                continue
            runner = self._call(rec.obj, "quantlinear_benchmark", family=family)
            if runner is not None:
                return runner
        return None

    def find_kernel(self, name: str) -> type[QuantLinear] | None:
        plugin = name.split(".", 1)[0]
        if plugin in self._records:
            self.load(plugin)
        for k in self.kernels():
            if k.name == name:
                return k
        return None


_default: Registry | None = None
_default_lock = threading.Lock()


def registry() -> Registry:
    """The process-wide registry, built from entry points on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Registry()
        return _default


def reset_registry() -> None:
    """Forget the process-wide registry (the next call to :func:`registry` rediscovers)."""
    global _default
    with _default_lock:
        _default = None
