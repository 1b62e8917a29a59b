"""Hooks of the example plugin (see the core's quantlinear/hookspecs.py for the API)."""

from quantlinear import hookimpl


@hookimpl
def quantlinear_plugin_api():
    return [1]


@hookimpl
def quantlinear_kernels():
    from .kernels.grouped import GroupedIntMatmul

    return [GroupedIntMatmul]
