"""Selection with fake kernels in a fresh registry: ordering, reasons, forcing, env filters."""

import pytest
import torch

import quantlinear as ql
from quantlinear import LayerSpec, QuantLinear, Registry, Scheme, Verdict, hookimpl, select_kernel
from ql_testmodels import DenseKernel


class FastA(DenseKernel):
    name = "fake.fast_a"
    priority = 10
    group_sizes = frozenset({128})


class FastB(DenseKernel):
    name = "fake.fast_b"
    priority = 10  # ties with fast_a: the name decides


class Picky(DenseKernel):
    name = "fake.picky"
    priority = 50

    @classmethod
    def check(cls, spec):
        return Verdict.no("needs a device feature this machine lacks")


class Slow(DenseKernel):
    name = "fake.slow"
    priority = 0
    bits = frozenset({2, 3, 4, 8})


class FakePlugin:
    @hookimpl
    def quantlinear_kernels(self):
        return [Slow, FastB, Picky, FastA]


@pytest.fixture
def reg():
    r = Registry(entry_points=False)
    r.register(FakePlugin(), "fake")
    return r


def spec(bits=4, group_size=128, **kw):
    return LayerSpec(Scheme(bits=bits, group_size=group_size), "gptq", 256, 64, False, torch.float32, "cpu", False, kw.pop("name", "model.layers.0.mlp.up_proj"))


def test_highest_priority_that_can_implement_wins_and_every_verdict_is_recorded(reg):
    sel = select_kernel(spec(), registry=reg)
    assert sel.kernel is FastA
    names = [c.kernel for c in sel.candidates]
    assert names == ["fake.picky", "fake.fast_a", "fake.fast_b", "fake.slow"]  # priority, then name
    picky = sel.candidates[0]
    assert not picky.verdict and picky.verdict.reason == "needs a device feature this machine lacks"
    assert [c.chosen for c in sel.candidates] == [False, True, False, False]


def test_reasons_come_from_declared_capabilities(reg):
    sel = select_kernel(spec(bits=8, group_size=32), registry=reg)
    reasons = {c.kernel: c.verdict.reason for c in sel.candidates}
    assert reasons["fake.fast_a"] == "bits=8 not supported (supports 4)"
    assert sel.kernel is Slow
    sel = select_kernel(spec(group_size=64), registry=reg)
    assert sel.kernel is FastB


def test_no_kernel_error_lists_every_candidate(reg):
    s = LayerSpec(Scheme(bits=4), "gptq", 256, 64, False, torch.float32, "meta", False, "blk.0.q")
    with pytest.raises(ql.NoKernelError) as e:
        select_kernel(s, registry=reg)
    msg = str(e.value)
    assert "blk.0.q" in msg and msg.count("runs on cpu, not meta") == 4


def test_forcing_a_kernel_or_plugin(reg):
    assert select_kernel(spec(), "fake.slow", registry=reg).kernel is Slow
    assert select_kernel(spec(), "fake", registry=reg).kernel is FastA
    with pytest.raises(ql.NoKernelError, match="needs a device feature"):
        select_kernel(spec(), "fake.picky", registry=reg)
    with pytest.raises(ql.UnknownBackendError, match="'tritonv2'.*fake"):
        select_kernel(spec(), "tritonv2", registry=reg)


def test_environment_filters(reg, monkeypatch):
    monkeypatch.setenv("QUANTLINEAR_DISABLE", "fake.fast_*")
    sel = select_kernel(spec(), registry=reg)
    assert sel.kernel is Slow
    assert "disabled by QUANTLINEAR_DISABLE" in sel.candidates[1].verdict.reason
    monkeypatch.delenv("QUANTLINEAR_DISABLE")
    monkeypatch.setenv("QUANTLINEAR_KERNELS", "fake.fast_b,fake.slow")
    sel = select_kernel(spec(), registry=reg)
    assert sel.kernel is FastB
    assert "not allowed by QUANTLINEAR_KERNELS" in {c.kernel: c.verdict.reason for c in sel.candidates}["fake.fast_a"]


def test_selection_is_cached_per_spec_but_reports_the_layer_name(reg):
    a = select_kernel(spec(name="a"), registry=reg)
    b = select_kernel(spec(name="b"), registry=reg)
    assert a.candidates is b.candidates and (a.spec.name, b.spec.name) == ("a", "b")


def test_explain_text_and_json(reg):
    text = ql.explain(spec(), registry=reg)
    assert "-> fake.fast_a" in text and "no fake.picky" in text
    import json

    d = json.loads(ql.explain(spec(), registry=reg, as_json=True))
    assert d["kernel"] == "fake.fast_a" and len(d["candidates"]) == 4


def test_verdict_is_falsy_when_rejecting_and_needs_a_reason():
    assert not Verdict.no("x") and Verdict.yes()
    with pytest.raises(ValueError):
        Verdict(False)


def test_kernel_declarations_are_checked_when_the_class_is_defined():
    with pytest.raises(TypeError, match="namespaced"):

        class NoName(QuantLinear):
            device_families = frozenset({"cpu"})
            bits = frozenset({4})

    with pytest.raises(TypeError, match="device_families is empty"):

        class NoDevice(QuantLinear):
            name = "x.y"
            bits = frozenset({4})


def test_kernel_round_trip_through_the_contract(reg):
    from quantlinear.quantize import quantize_weight

    s = LayerSpec(Scheme(bits=4, group_size=128), "gptq", 256, 64, True, torch.float32, "cpu", False, "l")
    wf = torch.randn(64, 256)
    iw = quantize_weight(wf, s.scheme)
    bias = torch.randn(64).half()
    layer = FastA.from_weights(s, iw, bias)
    x = torch.randn(2, 3, 256)
    ref = x @ iw.dequantize(128).t() + bias.float()
    torch.testing.assert_close(layer(x), ref)
    assert layer.name == "fake.fast_a" and "kernel=fake.fast_a" in repr(layer)
    assert not any(n in dict(layer.named_buffers()) for n in ("qweight", "qzeros", "scales"))  # checkpoint copy released
    with pytest.raises(ql.QuantLinearError, match="input has 255 features"):
        layer(torch.randn(2, 255))
    fresh = FastA(s)
    with pytest.raises(ql.QuantLinearError, match="not prepared"):
        fresh(x)


def test_user_priorities_override_declared_ones(reg, monkeypatch):
    sel = select_kernel(spec(), registry=reg, priorities={"fake.slow": 99})
    assert sel.kernel is Slow
    assert any("fake.slow 0->99" in n for n in sel.notes)
    monkeypatch.setenv("QUANTLINEAR_PRIORITY", "fake.fast_b=20")
    assert select_kernel(spec(), registry=reg).kernel is FastB
    monkeypatch.setenv("QUANTLINEAR_PRIORITY", "fake.fast_b")
    with pytest.raises(ql.QuantLinearError, match="pattern=integer"):
        select_kernel(spec(), registry=reg)
