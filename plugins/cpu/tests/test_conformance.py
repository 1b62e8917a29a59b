"""The CPU plugin's kernels pass the plugin author kit, like any third-party plugin must."""

from quantlinear.testing import KernelConformance
from quantlinear_cpu.kernels.dequant import DequantLinear
from quantlinear_cpu.kernels.int4pack import Int4PackLinear
from quantlinear_cpu.kernels.int8pack import Int8PackLinear


class TestCPUKernels(KernelConformance):
    kernels = [Int4PackLinear, Int8PackLinear, DequantLinear]
    device = "cpu"
