"""``rocm.tinygemm`` against the fake of PyTorch's ROCm build of the int4 ops (layout, contract, numerics)."""

import pytest
import torch

from quantlinear import Scheme
from quantlinear.benchutil import random_int_weights
from quantlinear_rocm.kernels.tinygemm import RocmTinyGemmLinear
from quantlinear_triton.packing import tinygemm_nibbles

import fake_rocm
from fake_rocm import FakeContractError, simulate_rocm
from rocm_testutil import CDNA, make_layer, rand_x, reference, rel_err


@pytest.mark.parametrize("ikt", [2, 4, 8])
def test_fake_layout_round_trip_and_differs_from_cuda(ikt):
    N, K = 48, 256
    q = torch.randint(0, 16, (N, K), generator=torch.Generator().manual_seed(ikt), dtype=torch.int32).to(torch.uint8)
    nib = tinygemm_nibbles(q)
    rocm = fake_rocm.pack_int4(nib, ikt, rocm=True)
    cuda = fake_rocm.pack_int4(nib, ikt, rocm=False)
    assert rocm.shape == cuda.shape == (N // 8, K // (16 * ikt), 32, ikt // 2) and rocm.dtype == torch.int32
    assert not torch.equal(rocm, cuda)  # same shape, other bytes: a weight packed for CUDA is garbage on ROCm
    assert torch.equal(fake_rocm.unpack_int4(rocm, N, K, rocm=True), q.to(torch.int64))
    assert torch.equal(fake_rocm.unpack_int4(cuda, N, K, rocm=False), q.to(torch.int64))
    assert not torch.equal(fake_rocm.unpack_int4(cuda, N, K, rocm=True), q.to(torch.int64))


@pytest.mark.parametrize("arch", CDNA)
@pytest.mark.parametrize("bits,group,sym", [(4, 128, True), (4, 32, False), (4, -1, False), (3, 64, False), (2, 128, True), (2, 512, False)])
def test_numerics_on_cdna(arch, bits, group, sym):
    K, N = 1024, 96
    sc = Scheme(bits=bits, group_size=group, sym=sym)
    w = random_int_weights(K, N, sc, seed=bits + group)
    gs = sc.group_size_for(K)
    # the op's own format: scale and float zero (8 - z) * s stored in bf16, w = (q - 8) * s + zero rounded to bf16
    gi = torch.arange(K) // gs
    s = w.scales.float().to(torch.bfloat16).float()[:, gi]
    zero = ((8 - w.zeros.float()) * w.scales.float()).to(torch.bfloat16).float()[:, gi]
    W_fmt = ((w.qweight.float() - 8) * s + zero).to(torch.bfloat16).float()
    with simulate_rocm(arch):
        layer, W, b = make_layer(RocmTinyGemmLinear, bits, group, sym, K, N, torch.bfloat16, bias=True, seed=bits + group)
        assert layer.packed.dtype == torch.int32 and layer.packed.dim() == 4 and layer.op_group in (32, 64, 128, 256)
        for M in (1, 5):
            x = rand_x(M, K, torch.bfloat16, seed=M)
            y = layer(x)
            assert rel_err(y, reference(x, W_fmt, b)) < 8e-3  # only the bf16 output rounding is left
            assert rel_err(y, reference(x, W, b)) < 2.5e-2  # vs exact: bf16 float zeros cost up to ~2% at 2 bits


def test_gate_and_contract_of_the_fake_op():
    nib = torch.zeros(32, 64, dtype=torch.uint8)
    with simulate_rocm("gfx1100"):
        with pytest.raises(RuntimeError, match="CDNA2"):
            torch.ops.aten._convert_weight_to_int4pack(nib, 2)
    with simulate_rocm("gfx942"):
        with pytest.raises(FakeContractError, match="multiple of 16"):
            torch.ops.aten._convert_weight_to_int4pack(torch.zeros(24, 64, dtype=torch.uint8), 2)
        B = torch.ops.aten._convert_weight_to_int4pack(nib, 2)
        x = torch.zeros(3, 128, dtype=torch.bfloat16)
        sz = torch.zeros(128 // 32, 32, 2, dtype=torch.bfloat16)
        assert torch.ops.aten._weight_int4pack_mm(x, B, 32, sz).shape == (3, 32)
        with pytest.raises(RuntimeError, match="kBFloat16"):
            torch.ops.aten._weight_int4pack_mm(x.half(), B, 32, sz)
        with pytest.raises(RuntimeError, match="qGroupSize"):
            torch.ops.aten._weight_int4pack_mm(x, B, 512, sz)
        with pytest.raises(FakeContractError, match="bf16"):
            torch.ops.aten._weight_int4pack_mm(x, B, 32, sz.float())


def test_selection_limits():
    from quantlinear import LayerSpec

    def spec(N=4096, dtype=torch.bfloat16, group=128, bits=4, K=4096):
        return LayerSpec(Scheme(bits=bits, group_size=group), "gptq", K, N, dtype=dtype, device=torch.device("cuda"))

    with simulate_rocm("gfx942", cpu_is_rocm=False):
        assert RocmTinyGemmLinear.can_implement(spec())
        assert "multiple of 16" in RocmTinyGemmLinear.can_implement(spec(N=4104)).reason
        assert "bfloat16" in RocmTinyGemmLinear.can_implement(spec(dtype=torch.float16)).reason
        assert "bits=8" in RocmTinyGemmLinear.can_implement(spec(bits=8)).reason
        assert "group_size=48" in RocmTinyGemmLinear.can_implement(spec(group=48)).reason
    for arch, what in (("gfx1100", "RDNA"), ("gfx1201", "RDNA"), ("gfx906", "older than CDNA2"), ("gfx908", "older than CDNA2")):
        with simulate_rocm(arch, cpu_is_rocm=False):
            v = RocmTinyGemmLinear.can_implement(spec())
            assert not v and what in v.reason and "isCDNA2orLater" in v.reason, (arch, v.reason)


def test_packs_on_the_layers_device():
    """prepare() hands the packer the codes on the layer's device (the packed layout is the device build's)."""
    seen = []
    real = fake_rocm.FAKE_OPS["_convert_weight_to_int4pack"]

    def spy(w, ikt):
        seen.append(w.device)
        return real(w, ikt)

    sc = Scheme(bits=4, group_size=128)
    w = random_int_weights(256, 32, sc, seed=0)
    from quantlinear import LayerSpec

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(fake_rocm.FAKE_OPS, "_convert_weight_to_int4pack", spy)
        with simulate_rocm("gfx90a"):
            RocmTinyGemmLinear.from_weights(LayerSpec(sc, "gptq", 256, 32, dtype=torch.bfloat16, device=torch.device("cpu")), w)
    assert seen == [torch.device("cpu")]
