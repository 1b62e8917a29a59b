"""The ROCm plugin's hooks. Adding a kernel: its file under ``kernels/``, one line here, its tests."""

from quantlinear import PLUGIN_API_VERSION, hookimpl


@hookimpl
def quantlinear_plugin_api():
    return [PLUGIN_API_VERSION]


@hookimpl
def quantlinear_kernels():
    from .kernels.scaled_mm_fp8 import RocmFP8ScaledMMLinear
    from .kernels.tinygemm import RocmTinyGemmLinear
    from .kernels.triton_fp import RocmTritonFPLinear
    from .kernels.triton_wna16 import RocmTritonLinear

    return [RocmTritonLinear, RocmTinyGemmLinear, RocmFP8ScaledMMLinear, RocmTritonFPLinear]
