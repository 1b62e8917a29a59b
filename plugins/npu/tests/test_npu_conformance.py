"""npu.wqbmm passes the plugin author kit, on CPU tensors that play NPU tensors (fake torch_npu active)."""

from __future__ import annotations

import pytest

from quantlinear.testing import KernelConformance

from fake_torch_npu import simulate_npu
from quantlinear_npu.kernels.wqbmm import WeightQuantBatchMatmulLinear


class TestNPUKernel(KernelConformance):
    kernels = [WeightQuantBatchMatmulLinear]
    device = "cpu"  # plays "npu" while simulate_npu() is active

    def pytest_generate_tests(self, metafunc):
        with simulate_npu():  # claimed cases are computed at collection time
            super().pytest_generate_tests(metafunc)

    @pytest.fixture(autouse=True)
    def _simulated(self):
        with simulate_npu():
            yield
