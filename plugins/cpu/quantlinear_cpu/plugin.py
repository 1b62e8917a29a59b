"""The CPU plugin's hooks. Adding a kernel: its file under ``kernels/``, one line here, its tests."""

from quantlinear import PLUGIN_API_VERSION, hookimpl


@hookimpl
def quantlinear_plugin_api():
    return [PLUGIN_API_VERSION]


@hookimpl
def quantlinear_kernels():
    from .kernels.dequant import DequantLinear
    from .kernels.fp8 import FP8Linear, FP8ScaledMMLinear
    from .kernels.gguf import GGUFLinear
    from .kernels.int4pack import Int4PackLinear
    from .kernels.int4x2 import Int4x2Linear
    from .kernels.int8pack import Int8PackLinear
    from .kernels.mxfp import MXLinear
    from .kernels.native import NativeF32Linear
    from .kernels.nvfp4 import NVFP4Linear

    return [NativeF32Linear, Int4PackLinear, Int8PackLinear, Int4x2Linear, DequantLinear, MXLinear, NVFP4Linear, FP8Linear, FP8ScaledMMLinear,
            GGUFLinear]


@hookimpl
def quantlinear_benchmark(family):
    if family != "cpu":
        return None
    from .bench import run

    return run
