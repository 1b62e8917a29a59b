"""cpu.gguf passes the GGUF conformance kit: every llama.cpp type, every dtype, bias, odd shapes."""

import torch

import quantlinear as ql
from quantlinear.formats import GGUF_FORMATS
from quantlinear.formats.gguf import gguf_scheme
from quantlinear.testing import rel_err
from quantlinear.testing_gguf import GGUFKernelConformance, build_gguf_layer, claimed_gguf_cases
from quantlinear_cpu.kernels.gguf import GGUFLinear


class TestGGUFLinear(GGUFKernelConformance):
    kernels = [GGUFLinear]
    device = "cpu"


def test_every_gguf_format_is_claimed():
    """The kit covers all ten types for this kernel (a declaration slip would silently drop one)."""
    assert {c.spec.format for c in claimed_gguf_cases(GGUFLinear)} == set(GGUF_FORMATS)


def test_row_blocks_match_one_shot(monkeypatch):
    """Large layers are computed block of rows by block of rows; the result must not depend on the split."""
    case = next(c for c in claimed_gguf_cases(GGUFLinear) if c.spec.format == "gguf_q4_k" and c.spec.dtype == torch.float32)
    layer, w, _ = build_gguf_layer(case)
    x = torch.randn(3, case.spec.in_features)
    whole = layer(x)
    monkeypatch.setattr(layer, "block_rows", 7)  # 7 does not divide N: a partial last block too
    assert rel_err(layer(x), whole.float()) < 1e-5  # only the GEMM's blocking differs


def test_auto_picks_cpu_gguf_and_explains_int_kernels_away():
    spec = ql.LayerSpec(gguf_scheme("Q6_K"), "gguf_q6_k", 512, 64, False, torch.bfloat16, "cpu", False, "l")
    sel = ql.select_kernel(spec, "auto")
    assert sel.kernel is GGUFLinear
    assert "data_type=gguf not supported" in sel.report()  # int kernels say why, not silently
