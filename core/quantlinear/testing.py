"""Conformance suite for kernels: what a plugin must pass before ``auto`` may pick it.

Use it from a plugin's own tests::

    from quantlinear.testing import KernelConformance
    from my_plugin.kernels.fast import FastLinear

    class TestFastLinear(KernelConformance):
        kernels = [FastLinear]
        device = "cpu"

pytest then generates, for every kernel, a set of *claimed* cases (layer specs the kernel says
it can implement, covering every declared bits / group size / sym / format / dtype value at
least once, plus bias and an odd shape) and checks each one:

* numerics against the core's fp32 reference dequantization (3-D input, non-contiguous input);
* state-dict round trip (``load_state_dict`` of checkpoint tensors gives the same layer);
* ``post_load`` is idempotent;
* no float copy of the weight is kept (no floating buffer as large as half the weight);
* ``torch.compile(fullgraph=True)`` traces the layer (fake implementations agree with real
  outputs in shape and dtype);
* every value outside the declared capabilities is rejected *with a reason*, and ``explain``
  reports the kernel.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .benchutil import random_int_weights
from .formats import FORMATS, IntWeights, get_format
from .qlinear import QuantLinear
from .scheme import Scheme
from .select import select_kernel
from .spec import LayerSpec

#: max |y - ref| / max |ref| allowed per activation dtype
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}

_GROUPS_TO_TRY = (32, 64, 128, -1)
_BITS_TO_TRY = (2, 3, 4, 5, 6, 7, 8)


@dataclass(frozen=True)
class Case:
    kernel: type[QuantLinear]
    spec: LayerSpec

    @property
    def id(self) -> str:
        s = self.spec
        return f"{self.kernel.name}-{s.scheme.id}-{s.format}-K{s.in_features}N{s.out_features}-{str(s.dtype)[6:]}{'-bias' if s.bias else ''}"


def _lcm(a: int, b: int) -> int:
    import math

    return a * b // math.gcd(a, b)


def _shape(kernel: type[QuantLinear], group: int, odd: bool) -> tuple[int, int]:
    """A small (K, N) honoring the kernel's alignment needs and the group size."""
    k_mult = _lcm(_lcm(kernel.in_features_multiple, 32), group if group > 0 else 32)
    n_mult = _lcm(kernel.out_features_multiple, 32)
    K = k_mult * (3 if odd else 2) if k_mult < 128 else k_mult * 2
    K = max(K, 128 if group in (-1, 0) else K)
    N = n_mult * (3 if odd else 2)
    return K, N


def claimed_cases(kernel: type[QuantLinear], device: str | torch.device = "cpu") -> list[Case]:
    """Specs the kernel accepts, covering each declared capability value at least once."""
    bits = sorted(kernel.bits & set(_BITS_TO_TRY))
    groups = [g for g in _GROUPS_TO_TRY if kernel.group_sizes is None or g in kernel.group_sizes]
    groups = groups or sorted(g for g in (kernel.group_sizes or ()) if g > 0)[:2]
    syms = sorted(kernel.sym, reverse=True)
    formats = sorted(kernel.formats & set(FORMATS))
    dtypes = sorted(kernel.dtypes, key=str)
    base = dict(bits=bits[0] if 4 not in bits else 4, group=groups[0], sym=syms[0], fmt=formats[0] if "gptq" not in formats else "gptq", dtype=torch.float32 if torch.float32 in dtypes else dtypes[0], bias=False, odd=False)
    variants = [dict(base)]
    for key, values in (("bits", bits), ("group", groups), ("sym", syms), ("fmt", formats), ("dtype", dtypes), ("bias", [True]), ("odd", [True])):
        for v in values:
            if base[key] != v:
                variants.append({**base, key: v})
    out, seen = [], set()
    for v in variants:
        scheme = Scheme(bits=v["bits"], group_size=v["group"], sym=v["sym"])
        K, N = _shape(kernel, v["group"], v["odd"])
        spec = LayerSpec(scheme, v["fmt"], K, N, v["bias"], v["dtype"], device, False, "conformance.layer")
        if get_format(spec.format).check_shape(spec) is not None or spec in seen:
            continue
        if v["fmt"] == "awq" and v["bits"] != 4:
            continue
        seen.add(spec)
        if kernel.can_implement(spec):
            out.append(Case(kernel, spec))
    return out


def rejected_specs(kernel: type[QuantLinear], device: str | torch.device = "cpu") -> list[LayerSpec]:
    """Specs outside the kernel's declared capabilities (each must be rejected with a reason)."""
    out = []
    base_bits = 4 if 4 in kernel.bits else min(kernel.bits or {4})
    for b in _BITS_TO_TRY:
        if b not in kernel.bits:
            out.append(LayerSpec(Scheme(bits=b, group_size=32), "gptq", 256, 64, False, torch.float32, device, False, "rejected"))
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        if dt not in kernel.dtypes:
            out.append(LayerSpec(Scheme(bits=base_bits, group_size=32), "gptq", 256, 64, False, dt, device, False, "rejected"))
    out.append(LayerSpec(Scheme(bits=base_bits, group_size=32), "gptq", 256, 64, False, torch.float32, "meta", False, "rejected"))
    return out


def build_layer(case: Case, *, seed: int = 0) -> tuple[QuantLinear, IntWeights, torch.Tensor | None]:
    spec = case.spec
    w = random_int_weights(spec.in_features, spec.out_features, spec.scheme, seed=seed)
    bias = (torch.randn(spec.out_features, generator=torch.Generator().manual_seed(seed)) * 0.1).to(torch.float16) if spec.bias else None
    return case.kernel.from_weights(spec, w, bias), w, bias


def reference(x: torch.Tensor, w: IntWeights, spec: LayerSpec, bias: torch.Tensor | None) -> torch.Tensor:
    y = x.to(torch.float32) @ w.dequantize(spec.group_size).t().to(x.device)
    return y + bias.float().to(x.device) if bias is not None else y


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).abs().max() / ref.abs().max().clamp(min=1e-12))


# ---- the checks, usable one by one ---------------------------------------------------------------
def check_numerics(case: Case) -> float:
    layer, w, bias = build_layer(case)
    spec = case.spec
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, spec.in_features, generator=g).to(spec.dtype).to(spec.device)
    y = layer(x)
    assert y.shape == (2, 3, spec.out_features) and y.dtype == spec.dtype, f"{case.id}: output {tuple(y.shape)} {y.dtype}"
    err = rel_err(y, reference(x, w, spec, bias))
    assert err <= TOLERANCE[spec.dtype], f"{case.id}: relative error {err:.3g} > {TOLERANCE[spec.dtype]}"
    xt = torch.randn(spec.in_features, 5, generator=g).to(spec.dtype).to(spec.device).t()  # non-contiguous
    err = rel_err(layer(xt), reference(xt, w, spec, bias))
    assert err <= TOLERANCE[spec.dtype], f"{case.id}: non-contiguous input: relative error {err:.3g}"
    return err


def check_state_dict_round_trip(case: Case, weights=None) -> None:
    """Checkpoint tensors loaded through ``load_state_dict`` give the same layer as ``from_weights``."""
    spec = case.spec
    w = weights if weights is not None else random_int_weights(spec.in_features, spec.out_features, spec.scheme, seed=3)
    sd = get_format(spec.format).pack(w, spec)
    if spec.bias:
        sd["bias"] = torch.zeros(spec.out_features, dtype=torch.float16)
    layer = case.kernel(spec)
    result = layer.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    layer.post_load()
    ref = case.kernel.from_weights(spec, w, sd.get("bias"))
    x = torch.randn(3, spec.in_features).to(spec.dtype).to(spec.device)
    torch.testing.assert_close(layer(x), ref(x))


def check_post_load_idempotent(case: Case, build=None) -> None:
    layer, _, _ = (build or build_layer)(case)
    x = torch.randn(2, case.spec.in_features).to(case.spec.dtype).to(case.spec.device)
    before = layer(x)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.post_load()
    torch.testing.assert_close(layer(x), before)
    after = layer.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)


def check_no_float_weight_copy(case: Case, build=None) -> None:
    layer, _, _ = (build or build_layer)(case)
    n = case.spec.in_features * case.spec.out_features
    big = [name for name, t in itertools.chain(layer.named_buffers(), layer.named_parameters()) if t.dtype.is_floating_point and t.numel() >= n // 2]
    assert not big, f"{case.id}: floating tensors as large as the weight are kept: {big}"


def check_compiles_fullgraph(case: Case, build=None) -> None:
    layer, _, _ = (build or build_layer)(case)
    x = torch.randn(4, case.spec.in_features).to(case.spec.dtype).to(case.spec.device)
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    ref = layer(x)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    torch.testing.assert_close(y, ref, atol=1e-3 if case.spec.dtype != torch.float32 else 1e-5, rtol=1e-3)


def check_rejections_have_reasons(kernel: type[QuantLinear], device: str | torch.device = "cpu") -> None:
    for spec in rejected_specs(kernel, device):
        v = kernel.can_implement(spec)
        assert not v, f"{kernel.name} accepts {spec.describe()} although it does not declare it"
        assert v.reason.strip(), f"{kernel.name} rejects {spec.describe()} without a reason"


def check_explain(case: Case) -> None:
    sel = select_kernel(case.spec, case.kernel.name, registry=_OneKernelRegistry(case.kernel))
    assert sel.kernel is case.kernel and case.kernel.name in sel.report()


class _OneKernelRegistry:
    """Just enough of a Registry for select_kernel to explain one kernel in isolation."""

    def __init__(self, kernel: type[QuantLinear]) -> None:
        self._k = kernel
        self.generation = 0

    def load_for_family(self, family: str) -> None: ...

    def plugins(self) -> list[Any]:
        return []

    def plugin(self, name: str) -> None:
        return None

    def kernels(self) -> list[type[QuantLinear]]:
        return [self._k]

    def find_kernel(self, name: str):
        return self._k if name == self._k.name else None


class KernelConformance:
    """Subclass in a test module, set ``kernels`` (and ``device``); pytest does the rest.

    The hooks below (how cases are made, how a layer is built, the numerics and state-dict
    checks) are what a conformance suite for another family of schemes overrides
    (``quantlinear.testing_fp.FloatKernelConformance``).
    """

    kernels: Sequence[type[QuantLinear]] = ()
    device: str = "cpu"
    cases_for = staticmethod(claimed_cases)
    build = staticmethod(build_layer)
    numerics = staticmethod(check_numerics)
    state_dict_round_trip = staticmethod(check_state_dict_round_trip)

    def pytest_generate_tests(self, metafunc: Any) -> None:
        if "case" in metafunc.fixturenames:
            cases = [c for k in self.kernels for c in self.cases_for(k, self.device)]
            metafunc.parametrize("case", cases, ids=[c.id for c in cases])
        if "kernel" in metafunc.fixturenames:
            metafunc.parametrize("kernel", list(self.kernels), ids=[k.name for k in self.kernels])

    def test_claims_cover_something(self, kernel: type[QuantLinear]) -> None:
        assert self.cases_for(kernel, self.device), f"{kernel.name} implements none of the standard cases on {self.device}"

    def test_numerics(self, case: Case) -> None:
        self.numerics(case)

    def test_state_dict_round_trip(self, case: Case) -> None:
        self.state_dict_round_trip(case)

    def test_post_load_idempotent(self, case: Case) -> None:
        check_post_load_idempotent(case, self.build)

    def test_no_float_weight_copy(self, case: Case) -> None:
        check_no_float_weight_copy(case, self.build)

    def test_compiles_fullgraph(self, case: Case) -> None:
        check_compiles_fullgraph(case, self.build)

    def test_rejections_have_reasons(self, kernel: type[QuantLinear]) -> None:
        check_rejections_have_reasons(kernel, self.device)

    def test_explain(self, case: Case) -> None:
        check_explain(case)


__all__ = [
    "Case",
    "KernelConformance",
    "TOLERANCE",
    "build_layer",
    "check_compiles_fullgraph",
    "check_explain",
    "check_no_float_weight_copy",
    "check_numerics",
    "check_post_load_idempotent",
    "check_rejections_have_reasons",
    "check_state_dict_round_trip",
    "claimed_cases",
    "reference",
    "rejected_specs",
]
