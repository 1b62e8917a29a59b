"""The CPU plugin's hooks. Adding a kernel: its file under ``kernels/``, one line here, its tests."""

from quantlinear import PLUGIN_API_VERSION, hookimpl


@hookimpl
def quantlinear_plugin_api():
    return [PLUGIN_API_VERSION]


@hookimpl
def quantlinear_kernels():
    from .kernels.dequant import DequantLinear
    from .kernels.int4pack import Int4PackLinear
    from .kernels.int8pack import Int8PackLinear

    return [Int4PackLinear, Int8PackLinear, DequantLinear]
