"""The ROCm kernels pass the plugin author kit, on CPU tensors that play a gfx942 (MI300X) device.

``rocm.tinygemm`` runs on the fake ROCm aten ops; ``rocm.triton`` runs the shared kernels with the
gfx942 launch table in Triton's interpreter.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from quantlinear.testing import KernelConformance
from quantlinear_rocm import device as rocm_device
from quantlinear_rocm import tune
from quantlinear_rocm.kernels.tinygemm import RocmTinyGemmLinear
from quantlinear_rocm.kernels.triton_wna16 import RocmTritonLinear

from fake_rocm import simulate_rocm
from rocm_testutil import needs_interpreter


@contextlib.contextmanager
def mi300():
    """CPU tensors play a gfx942 device; the plugin's CPU stand-in switch on (collection runs outside fixtures)."""
    with simulate_rocm("gfx942"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(rocm_device, "CPU_STANDS_IN", True)
        yield
    tune.TUNER.clear()


def generated_under_mi300(generate):
    """The kit's case generation, run while the simulated device is active (claims depend on it)."""

    def pytest_generate_tests(self, metafunc):
        with mi300():
            generate(self, metafunc)

    return pytest_generate_tests


@pytest.fixture(autouse=True)
def _on_mi300():
    with mi300():
        yield


class TestRocmTinyGemm(KernelConformance):
    kernels = [RocmTinyGemmLinear]
    device = "cpu"
    pytest_generate_tests = generated_under_mi300(KernelConformance.pytest_generate_tests)


@needs_interpreter
class TestRocmTriton(KernelConformance):
    kernels = [RocmTritonLinear]
    device = "cpu"
    pytest_generate_tests = generated_under_mi300(KernelConformance.pytest_generate_tests)

    @pytest.fixture(autouse=True)
    def _no_bf16_in_the_interpreter(self, request):
        case = getattr(request.node, "callspec", None) and request.node.callspec.params.get("case")
        if case is not None and case.spec.dtype == torch.bfloat16:
            pytest.skip("Triton's interpreter gets bf16 tl.dot wrong on CPU (the CUDA plugin's tests skip bf16 on CPU too); "
                        "the bf16 kernels are compiled for the gfx targets in test_rocm_compile.py")
