"""The plugin API: the hooks a quantlinear plugin may implement.

A plugin is any module or object with functions marked ``@quantlinear.hookimpl``.  It is
found through the entry-point group ``quantlinear.plugins`` (the entry point's *name* is the
plugin's name; in-tree device plugins use their device family as name: ``cpu``, ``cuda``,
``rocm``, ``xpu``, ``npu``) or registered in-process with
``quantlinear.registry().register(obj, name)``.
"""

from __future__ import annotations

import pluggy

PROJECT = "quantlinear"

#: Version of this hook API.  Plugins may declare the versions they were written against
#: with ``quantlinear_plugin_api()``; the core refuses plugins that exclude it.
PLUGIN_API_VERSION = 1

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def quantlinear_kernels():
    """Return the plugin's kernels: a list of :class:`quantlinear.QuantLinear` subclasses.

    Called once per plugin, lazily (when ``auto`` needs the plugin's device family, when the
    user names the plugin or one of its kernels, or by ``quantlinear doctor``).  Import
    heavy or vendor modules inside this function, not at module import time, so that a
    missing vendor runtime becomes a reported plugin error instead of a crash.
    """


@hookspec(firstresult=True)
def quantlinear_plugin_api():
    """Return the plugin API versions the plugin supports (an int or a collection of ints)."""


@hookspec(firstresult=True)
def quantlinear_benchmark(family):
    """Return a benchmark runner for device ``family`` ("cuda", "cpu", ...), or None.

    The runner is ``run(options: quantlinear.benchutil.BenchOptions) -> list[BenchRow]``:
    it times this plugin's kernels and the peers it knows (dense matmul, vendor ops) on the
    shapes in ``options`` and returns one row per (kernel, shape, M).  ``quantlinear bench``
    prints the rows as a table, writes JSON and, with ``--plot``, draws them.
    """
