"""A faithful fake of the torch_npu APIs the quantlinear NPU plugin calls, for machines without Ascend.

Sources (see ../README.md for versions and commits): op-plugin
``docs/zh/custom_APIs/torch_npu/torch_npu-npu_weight_quant_batchmatmul.md``,
``torch_npu-npu_convert_weight_to_int4pack.md``, ``op_plugin/config/op_plugin_functions.yaml`` (the
exact schemas below), ``op_plugin/ops/opapi/WeightQuantBatchMatmulV2KernelNpuOpApi.cpp`` and
``ConvertWeightToINT4PackKernelNpuOpApi.cpp`` (argument checks, K/N inference, the transposed-weight
test of ``op_plugin/utils/OpUtils.cpp``), ``op_plugin/python/meta/_meta_registrations.py`` (shape
function used under torch.compile), and Ascend/pytorch ``torch_npu/npu/__init__.py``
(``is_available``, ``get_device_name``).

* ``torch.ops.npu.npu_weight_quant_batchmatmul`` / ``npu_convert_weight_to_int4pack`` are defined
  with the yaml schemas and implemented for the CPU dispatch key (CPU tensors stand in for NPU
  tensors), with the op-plugin meta function as their fake (for torch.compile).
* Every documented constraint is checked and raised as ``RuntimeError`` (like ``TORCH_CHECK``);
  conditions the real code does not check but silently relies on (e.g. int4 values outside
  [-8, 7] are masked by the packer) raise ``FakeContractError``; features the fake does not model
  (FRACTAL_NZ, int64 scales, quant_scale, weight_dtype) raise ``NotImplementedError``.
* The int4 nibble order inside an int32 is undocumented ("interleaved"); the fake packs in the
  order op-plugin's source uses by default, and tests can select another order
  (``nibble_order=``) to prove that a caller never depends on it.
* ``simulate_npu(soc=...)`` installs a fake ``torch_npu`` module and ``torch.npu`` (device list,
  SoC name), maps ``device="cpu"`` to the family "npu", and activates the ops.
"""

from __future__ import annotations

import contextlib
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import torch

import quantlinear.devices
import quantlinear.select


class FakeContractError(RuntimeError):
    """A documented precondition the real op does not check (it would compute garbage)."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise RuntimeError(msg)


def _contract(cond: bool, msg: str) -> None:
    if not cond:
        raise FakeContractError("[documented, unchecked by the real op] " + msg)


@dataclass
class _State:
    active: bool = False
    soc: str = "Ascend910B3"
    available: bool = True
    nibble_order: tuple[int, ...] = tuple(range(8))  # element i of 8 -> nibble position order[i]


STATE = _State()

SCHEMAS = {
    "npu_weight_quant_batchmatmul": "npu_weight_quant_batchmatmul(Tensor x, Tensor weight, Tensor antiquant_scale, Tensor? antiquant_offset=None, Tensor? quant_scale=None, Tensor? quant_offset=None, Tensor? bias=None, int antiquant_group_size=0, int inner_precise=0, int? weight_dtype=None) -> Tensor",
    "npu_convert_weight_to_int4pack": "npu_convert_weight_to_int4pack(Tensor weight, int inner_k_tiles=0) -> Tensor",
}


def _product(soc: str) -> str:
    if soc.startswith("Ascend910B") or soc.startswith("Ascend910_93"):
        return "A2/A3"
    if soc.startswith("Ascend310P"):
        return "inference"
    return "other"


def _active() -> None:
    if not STATE.active:
        raise RuntimeError("fake torch_npu is not active (use fake_torch_npu.simulate_npu())")


def _same_device(*ts) -> None:
    devs = {t.device for t in ts if t is not None}
    _check(len(devs) <= 1, f"Expected all tensors to be on the same device, but found {sorted(map(str, devs))}")


def is_transpose_last_two_dims(t: torch.Tensor) -> bool:
    """op_plugin/utils/OpUtils.cpp: a full transposed view of a contiguous (n, k) tensor."""
    if t.dim() < 2 or t.dim() > 3:
        return False
    storage = t.untyped_storage().nbytes() // t.element_size()
    return (t.stride(-2) == 1 and t.stride(-1) == t.size(-2) and t.numel() == storage and t.storage_offset() == 0
            and not (t.size(-1) == 1 and t.size(-2) == 1))


# ---- int4 packing in the fake's (selectable) nibble order --------------------------------------------
def _pack_int4(values: torch.Tensor) -> torch.Tensor:
    v = (values.to(torch.int64) & 0xF).reshape(*values.shape[:-1], values.shape[-1] // 8, 8)
    word = torch.zeros(v.shape[:-1], dtype=torch.int64)
    for i, pos in enumerate(STATE.nibble_order):
        word |= v[..., i] << (4 * pos)
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def _unpack_int4(words: torch.Tensor) -> torch.Tensor:
    w = words.to(torch.int64) & 0xFFFFFFFF
    vals = [((w >> (4 * pos)) & 0xF) for pos in STATE.nibble_order]
    v = torch.stack(vals, dim=-1).reshape(*words.shape[:-1], words.shape[-1] * 8)
    return torch.where(v >= 8, v - 16, v)


# ---- the ops --------------------------------------------------------------------------------------------
def npu_convert_weight_to_int4pack(weight: torch.Tensor, inner_k_tiles: int = 0) -> torch.Tensor:
    _active()
    _check(_product(STATE.soc) == "A2/A3", f"npu_convert_weight_to_int4pack is not supported on {STATE.soc} (Atlas A2/A3 only)")
    _check(weight.is_contiguous(), "weight should be contiguous")
    _check(weight.dim() in (2, 3), f"weight shape only support dim num 2/3, but it is {weight.dim()}")
    _check(weight.dtype in (torch.int32, torch.float32), f"weight dtype only support int32 and float32, but it is {weight.dtype}")
    if weight.dtype == torch.float32:
        raise NotImplementedError("fake torch_npu: float32 (fp4_e2m1, Ascend950) packing is not modelled")
    for i in range(weight.dim()):
        _check(weight.size(i) > 0, "weight dim should be greater than 0")
    _check(weight.size(-1) % 8 == 0, f"weight last dim should be the multiple of 8, but it is {weight.size(-1)}")
    _contract(bool(((weight >= -8) & (weight <= 7)).all()), "values must lie in the int4 range [-8, 7] (the packer masks them to 4 bits)")
    return _pack_int4(weight)


def npu_weight_quant_batchmatmul(x, weight, antiquant_scale, antiquant_offset=None, quant_scale=None, quant_offset=None,
                                 bias=None, antiquant_group_size=0, inner_precise=0, weight_dtype=None):
    _active()
    prod = _product(STATE.soc)
    # -- WeightQuantBatchMatmulV2KernelNpuOpApi.cpp
    _check(x.dim() >= 2, f"x shape do not support dim num less than 2, but it is {x.dim()}")
    _check(weight.dim() >= 2, f"weight shape do not support dim num less than 2, but it is {weight.dim()}")
    trans_weight = is_transpose_last_two_dims(weight)
    packed4 = weight.dtype in (torch.int32, torch.float32)
    weight_k = weight.size(-2) * 8 if (packed4 and trans_weight) else weight.size(-2)
    _check(x.size(-1) == weight_k, f"The k of x and weight should be equal. but x_k_dim is {x.size(-1)}, weight_k_dim is {weight_k}")
    N = weight.size(-1) * 8 if (packed4 and not trans_weight) else weight.size(-1)
    g = int(antiquant_group_size)
    _check(g == 0 or (32 <= g <= weight_k - 1 and g % 32 == 0),
           "antiquant_group_size can be either 0 or a multiple of 32 within the range 32 to weight_k_dim - 1.")
    _check(quant_scale is not None or quant_offset is None,
           "Quantization parameters are incorrectly set, quant_offset cannot exist in isolation from quant_scale")
    _check(inner_precise in (0, 1), f"inner_precise only support 0 or 1. but is:{inner_precise}")
    # -- the documentation (single-operator mode, ND weights)
    if x.dim() != 2 or weight.dim() != 2:
        raise NotImplementedError("fake torch_npu models the documented 2-D (M, K) x (K, N) case only")
    if weight_dtype is not None or quant_scale is not None or inner_precise == 1:
        raise NotImplementedError("fake torch_npu does not model weight_dtype, quant_scale or inner_precise=1 (FRACTAL_NZ only)")
    _same_device(x, weight, antiquant_scale, antiquant_offset, bias)
    M, K = x.shape
    _check(M >= 1 and 1 <= K <= 65535 and 1 <= N <= 65535, f"K and N must lie in [1, 65535] and the tensors must not be empty (M={M}, K={K}, N={N})")
    allowed_x = (torch.float16, torch.bfloat16) if prod == "A2/A3" else (torch.float16,)
    _check(prod != "other", f"npu_weight_quant_batchmatmul is not documented for {STATE.soc}")
    _check(x.dtype in allowed_x, f"x dtype {x.dtype} is not supported on {STATE.soc} (supported: {allowed_x})")
    allowed_w = (torch.int8, torch.int32) if prod == "A2/A3" else (torch.int8,)
    _check(weight.dtype in allowed_w, f"weight dtype {weight.dtype} is not supported on {STATE.soc} (supported: {allowed_w})")
    _check(weight.is_contiguous() or trans_weight, f"weight must be ND contiguous or a transposed view, got strides {weight.stride()}")
    _check(not (packed4 and trans_weight and tuple(weight.shape) == (1, 8)),
           "The k of x and weight should be equal (transposed int4 weight of shape (1, 8) is not supported)")
    if antiquant_scale.dtype == torch.int64:
        raise NotImplementedError("fake torch_npu does not model int64 (npu_trans_quant_param) antiquant_scale")
    _check(antiquant_scale.dtype == x.dtype, f"antiquant_scale dtype {antiquant_scale.dtype} must equal x dtype {x.dtype}")
    shape = tuple(antiquant_scale.shape)
    if g == 0:
        _check(shape in ((1,), (1, 1), (N,), (1, N)), f"antiquant_scale must be pertensor (1,)/(1, 1) or perchannel (N,)/(1, N) with N={N}, got {shape}")
    else:
        G = math.ceil(K / g)
        _check(shape == (G, N), f"pergroup antiquant_scale must be (ceil(K / antiquant_group_size), N) = ({G}, {N}), got {shape}")
    if antiquant_offset is not None:
        _check(tuple(antiquant_offset.shape) == shape, f"antiquant_offset shape {tuple(antiquant_offset.shape)} must equal antiquant_scale's {shape}")
        _check(antiquant_offset.dtype == antiquant_scale.dtype, f"antiquant_offset dtype {antiquant_offset.dtype} must equal antiquant_scale's {antiquant_scale.dtype}")
    if bias is not None:
        _check(tuple(bias.shape) in ((N,), (1, N)), f"bias must be (N,) or (1, N), got {tuple(bias.shape)}")
        _check(bias.is_contiguous(), "bias does not support non-contiguous tensors")
        want = torch.float32 if x.dtype == torch.bfloat16 else torch.float16
        _check(bias.dtype == want, f"bias must be {want} for x of dtype {x.dtype}, got {bias.dtype}")
    # -- compute: y = x @ ((weight + offset) * scale) + bias, from the integers, in fp32
    if packed4:
        codes = _unpack_int4(weight.t()).t() if trans_weight else _unpack_int4(weight)  # (K, N)
    else:
        codes = weight.to(torch.int64)
    wf = codes.to(torch.float32)
    rows = (torch.arange(K) // g) if g else torch.zeros(K, dtype=torch.long)

    def expand(t):
        t = t.to(torch.float32).reshape(-1, N) if t.numel() > 1 else t.to(torch.float32).reshape(1, 1).expand(1, N)
        return t.index_select(0, rows) if g else t.expand(K, N)

    if antiquant_offset is not None:
        wf = wf + expand(antiquant_offset)
    y = x.to(torch.float32) @ (wf * expand(antiquant_scale))
    if bias is not None:
        y = y + bias.to(torch.float32).reshape(1, N)
    return y.to(x.dtype)


def _wqbmm_meta(x, weight, antiquant_scale, antiquant_offset=None, quant_scale=None, quant_offset=None, bias=None,
                antiquant_group_size=0, inner_precise=0, weight_dtype=None):
    # op_plugin/python/meta/_meta_registrations.py: npu_weight_quant_batchmatmul_meta
    dim_m = x.size(0)
    if (weight.dtype == torch.int32 or weight.dtype == torch.float32) and weight.is_contiguous():
        dim_n = weight.size(1) * 8
    else:
        dim_n = weight.size(1)
    if quant_scale is not None:
        return x.new_empty((dim_m, dim_n), dtype=torch.int8)
    return x.new_empty((dim_m, dim_n), dtype=x.dtype)


def _int4pack_meta(weight, inner_k_tiles=0):
    return weight.new_empty((*weight.shape[:-1], weight.shape[-1] // 8), dtype=torch.int32)


def _define_ops() -> None:
    if hasattr(torch.ops.npu, "npu_weight_quant_batchmatmul"):
        return
    lib = torch.library.Library("npu", "DEF")
    for schema in SCHEMAS.values():
        lib.define(schema)
    lib.impl("npu_weight_quant_batchmatmul", npu_weight_quant_batchmatmul, "CPU")
    lib.impl("npu_convert_weight_to_int4pack", npu_convert_weight_to_int4pack, "CPU")
    torch.library.register_fake("npu::npu_weight_quant_batchmatmul", _wqbmm_meta, lib=lib)
    torch.library.register_fake("npu::npu_convert_weight_to_int4pack", _int4pack_meta, lib=lib)
    _LIBS.append(lib)


_LIBS: list = []
_define_ops()


# ---- fake modules ------------------------------------------------------------------------------------------
def _make_modules(version: str):
    npu = types.ModuleType("torch_npu.npu")
    npu.is_available = lambda: STATE.available and hasattr(mod._C, "_npu_setDevice") and npu.device_count() > 0
    npu.device_count = lambda: 1 if STATE.available else 0
    npu.current_device = lambda: 0

    def get_device_name(device_name=None):
        idx = 0 if device_name is None else (device_name if isinstance(device_name, int) else torch.device(device_name).index or 0)
        if idx < 0 or idx >= npu.device_count():
            raise AssertionError("Invalid device id")
        return STATE.soc

    npu.get_device_name = get_device_name
    mod = types.ModuleType("torch_npu")
    mod.__version__ = version
    mod.npu = npu
    mod._C = types.SimpleNamespace(_npu_setDevice=lambda i: None)
    mod.npu_weight_quant_batchmatmul = torch.ops.npu.npu_weight_quant_batchmatmul
    mod.npu_convert_weight_to_int4pack = torch.ops.npu.npu_convert_weight_to_int4pack
    return mod, npu


@contextlib.contextmanager
def simulate_npu(*, soc: str = "Ascend910B3", available: bool = True, nibble_order=None, family: bool = True, version: str | None = None):
    """A working torch_npu on an Ascend ``soc``: CPU tensors play NPU tensors.  Undone on exit."""
    import pytest

    version = version or torch.__version__.split("+")[0]
    mod, npu = _make_modules(version)
    real = quantlinear.devices.device_family

    def device_family(device):
        d = torch.device(device)
        return "npu" if d.type == "cpu" else real(d)

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "torch_npu", mod)
        mp.setitem(sys.modules, "torch_npu.npu", npu)
        mp.setattr(torch, "npu", npu, raising=False)
        if family:
            mp.setattr(quantlinear.devices, "device_family", device_family)
            mp.setattr(quantlinear.select, "device_family", device_family)
        mp.setattr(STATE, "active", True)
        mp.setattr(STATE, "soc", soc)
        mp.setattr(STATE, "available", available)
        mp.setattr(STATE, "nibble_order", tuple(nibble_order) if nibble_order is not None else tuple(range(8)))
        quantlinear.select.clear_cache()
        try:
            yield mod
        finally:
            quantlinear.select.clear_cache()


@contextlib.contextmanager
def broken_torch_npu(root: Path, message: str = "libhccl.so: cannot open shared object file: No such file or directory"):
    """An installed torch_npu whose import fails like it does without the CANN toolkit."""
    import pytest

    site = Path(root) / "broken_torch_npu_site"
    (site / "torch_npu").mkdir(parents=True, exist_ok=True)
    (site / "torch_npu" / "__init__.py").write_text(f"raise ImportError({message!r})\n")
    with pytest.MonkeyPatch.context() as mp:
        for name in [m for m in sys.modules if m == "torch_npu" or m.startswith("torch_npu.")]:
            mp.delitem(sys.modules, name)
        mp.syspath_prepend(str(site))
        yield site
