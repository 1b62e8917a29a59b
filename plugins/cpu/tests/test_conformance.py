"""The CPU plugin's kernels pass the plugin author kit, like any third-party plugin must."""

from quantlinear.testing import KernelConformance
from quantlinear_cpu.kernels.dequant import DequantLinear
from quantlinear_cpu.kernels.int4pack import Int4PackLinear
from quantlinear_cpu.kernels.int4x2 import Int4x2Linear
from quantlinear_cpu.kernels.int8pack import Int8PackLinear
from quantlinear_cpu.kernels.native import NativeF32Linear


class TestCPUKernels(KernelConformance):
    kernels = [Int4PackLinear, Int8PackLinear, Int4x2Linear, NativeF32Linear, DequantLinear]
    device = "cpu"
