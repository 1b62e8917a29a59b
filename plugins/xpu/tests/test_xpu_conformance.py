"""The XPU kernels pass the plugin author kit, run on CPU tensors that play XPU tensors (fakes active)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from quantlinear.testing import KernelConformance

from fake_xpu import fake_ipex, simulate_xpu
from quantlinear_xpu.kernels.int4_onednn import Int4OneDNNLinear
from quantlinear_xpu.kernels.int8pack import Int8PackLinear
from quantlinear_xpu.kernels.ipex_woq import IPEXWeightOnlyLinear, ipex_api

IPEX_VERSION = ".".join(torch.__version__.split(".")[:2]) + ".10+xpu"


class _OnSimulatedXPU(KernelConformance):
    device = "cpu"  # plays "xpu" while simulate_xpu() is active

    @staticmethod
    @contextlib.contextmanager
    def environment():
        with simulate_xpu():
            yield

    def pytest_generate_tests(self, metafunc):
        with self.environment():  # claimed cases are computed at collection time
            super().pytest_generate_tests(metafunc)

    @pytest.fixture(autouse=True)
    def _simulated(self):
        with self.environment():
            yield


class TestXPUOneDNNKernels(_OnSimulatedXPU):
    kernels = [Int4OneDNNLinear, Int8PackLinear]


class TestXPUIPEXKernel(_OnSimulatedXPU):
    kernels = [IPEXWeightOnlyLinear]

    @staticmethod
    @contextlib.contextmanager
    def environment():
        ipex_api.cache_clear()
        try:
            with simulate_xpu(), fake_ipex(IPEX_VERSION):
                yield
        finally:
            ipex_api.cache_clear()
