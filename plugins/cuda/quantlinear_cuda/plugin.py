"""The CUDA plugin's hooks. Adding a kernel: its file under ``kernels/``, one line here, its tests."""

from quantlinear import PLUGIN_API_VERSION, hookimpl


@hookimpl
def quantlinear_plugin_api():
    return [PLUGIN_API_VERSION]


@hookimpl
def quantlinear_kernels():
    from .kernels.scaled_mm_fp8 import FP8ScaledMMLinear
    from .kernels.scaled_mm_mx import ScaledMMMXLinear
    from .kernels.tinygemm import TinyGemmLinear
    from .kernels.triton_fp import TritonFPLinear
    from .kernels.triton_gguf import TritonGGUFLinear
    from .kernels.triton_wna16 import TritonWNA16Linear

    return [TritonWNA16Linear, TinyGemmLinear, FP8ScaledMMLinear, ScaledMMMXLinear, TritonFPLinear, TritonGGUFLinear]


@hookimpl
def quantlinear_benchmark(family):
    if family != "cuda":
        return None
    from .bench import run

    return run
