"""The shared library on its own: the tuner over a plugin-defined space, the op factory, launch options."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from quantlinear_triton import ops, tune
from quantlinear_triton.runtime import interpreting

P = tune.Problem(bits=4, slab=32, group_size=128, has_zeros=False, dtype="float16", N=256, K=512)


@dataclass(frozen=True)
class ToyProps:
    name: str
    arch: str
    simulated: bool = False


class ToySpace(tune.Settings):
    """A made-up plugin: table key = arch, one GEMV config whose BN says which arch chose it."""

    def __init__(self, tuned_dir, props):
        super().__init__("toy", tuned_dir)
        self.props = props
        self.candidates_asked = []

    def device_props(self, device):
        return self.props

    def default_config(self, p, M, props, allow_dqmm=True):
        return {"kernel": "gemv", "BM": 1, "BN": 16 if props.arch == "a1" else 32, "split_k": 1}

    def candidates(self, p, M, props):
        self.candidates_asked.append((p, M, props.arch))
        return [self.default_config(p, M, props)]


def test_settings_names_follow_the_family(monkeypatch, tmp_path):
    s = tune.Settings("toy", tmp_path)
    assert (s.env_tune, s.env_cache, s.env_dqmm) == ("QUANTLINEAR_TOY_TUNE", "QUANTLINEAR_TOY_TUNE_CACHE", "QUANTLINEAR_TOY_DQMM")
    monkeypatch.delenv("QUANTLINEAR_TOY_TUNE_CACHE", raising=False)
    assert s.cache_path("a1").name == "toy-tune-a1.json" and s.shipped_path("a1") == tmp_path / "a1.json"
    monkeypatch.setenv("QUANTLINEAR_TOY_TUNE", "off")
    monkeypatch.setenv("QUANTLINEAR_TOY_DQMM", "0")
    assert not s.tuning_enabled() and not s.dqmm_enabled()


def test_tuner_tables_per_arch_key(monkeypatch, tmp_path):
    monkeypatch.setenv("QUANTLINEAR_TOY_TUNE", "0")
    monkeypatch.setenv("QUANTLINEAR_TOY_TUNE_CACHE", "off")
    shipped = {"version": tune.CACHE_VERSION, "configs": {P.key(16): {"config": {"kernel": "dot", "BM": 16, "BN": 64, "split_k": 1}}}}
    (tmp_path / "a1.json").write_text(json.dumps(shipped))
    dev = torch.device("cuda", 0)
    a1 = tune.Tuner(ToySpace(tmp_path, ToyProps("toy gpu 1", "a1")))
    assert a1.get(dev, P, 9)["kernel"] == "dot" and a1.lookup(a1.device_props(dev), P, 16)[1] == "shipped"
    assert a1.get(dev, P, 1) == {"kernel": "gemv", "BM": 1, "BN": 16, "split_k": 1}  # not in the table: the space's heuristic
    a2 = tune.Tuner(ToySpace(tmp_path, ToyProps("toy gpu 2", "a2")))
    assert a2.get(dev, P, 9)["BN"] == 32  # another arch key, another (absent) table
    sim = tune.Tuner(ToySpace(tmp_path, ToyProps("sim", "a1", simulated=True)))
    assert sim.get(dev, P, 9)["kernel"] == "gemv"  # simulated devices never read tables


def test_tune_writes_the_arch_cache_with_measurements(monkeypatch, tmp_path):
    pytest.importorskip("triton")
    import triton.testing

    monkeypatch.setenv("QUANTLINEAR_TOY_TUNE_CACHE", str(tmp_path / "cache.json"))
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: 0.5)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    space = ToySpace(tmp_path, ToyProps("toy gpu 1", "a1"))
    t = tune.Tuner(space)
    best = t.tune(space.props, P, 3, run=lambda cfg: None)
    assert best == space.default_config(P, 3, space.props) and space.candidates_asked == [(P, 3, "a1")]
    data = json.loads((tmp_path / "cache.json").read_text())
    assert data["arch"] == "a1" and data["configs"][P.key(4)]["best_us"] == 500.0


def test_a_space_can_ask_for_a_second_round_from_the_first_ones_ranking(monkeypatch, tmp_path):
    """``refine(ranked)``: candidates made from the first round's results (fastest first), measured after it; a
    configuration measured already is not measured again, and the fastest of both rounds wins."""
    pytest.importorskip("triton")
    import triton.testing

    monkeypatch.setenv("QUANTLINEAR_TOY_TUNE_CACHE", "off")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    times = {"a": 3.0, "b": 1.0, "c": 2.0, "b2": 0.5}
    calls = []

    def run(cfg):
        calls.append(cfg["name"])
        return cfg["name"]

    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: times[fn()])
    space = ToySpace(tmp_path, ToyProps("toy gpu 1", "a1"))
    space.candidates = lambda p, M, props: [{"kernel": "gemv", "name": n} for n in ("a", "b", "c")]
    asked = []
    space.refine = lambda ranked: asked.append([c["name"] for c in ranked]) or [ranked[0], {"kernel": "gemv", "name": "b2"}]
    best = tune.Tuner(space).tune(space.props, P, 3, run=run)
    assert asked == [["b", "c", "a"]] and best["name"] == "b2"
    assert [n for n in calls if n == "b"] == ["b", "b"]  # (warm + timed once: the second round skipped it)


def test_op_factory_registers_a_namespaced_op():
    calls = []

    def run(x, qweight, scales, zeros, bias, bits, group_size, in_features, slab, zero_point):
        calls.append((bits, group_size, in_features, slab, zero_point))
        return x.new_zeros((x.shape[0], qweight.shape[0]))

    ops.define_wna16_gemm("quantlinear_toytest::wna16_gemm", run)
    op = torch.ops.quantlinear_toytest.wna16_gemm
    assert str(op.default._schema).startswith("quantlinear_toytest::wna16_gemm(Tensor x, Tensor qweight, Tensor scales, Tensor? zeros")
    x, q, s = torch.randn(3, 64), torch.zeros(8, 8, dtype=torch.int32), torch.ones(1, 8)
    assert op(x, q, s, None, None, 4, 64, 64, 32, 8.0).shape == (3, 8) and calls == [(4, 64, 64, 32, 8.0)]
    y = op(x.to("meta"), q.to("meta"), s.to("meta"), None, None, 4, 64, 64, 32, 8.0)  # the fake
    assert y.is_meta and y.shape == (3, 8) and len(calls) == 1


@pytest.mark.skipif(not interpreting(), reason="imports the kernels module under the interpreter")
def test_backend_options_reach_the_launch_only_when_present():
    from quantlinear_triton import kernels

    base = {"kernel": "dot", "BM": 16, "BN": 32, "split_k": 1, "warps": 4, "stages": 3, "swap": True, "scale_w": False, "group_m": 8}
    common = kernels._static_args(base, 4, 32, 128, 512, False, False, False)[-1]
    assert not set(common) & set(kernels.BACKEND_OPTIONS)  # a CUDA configuration launches exactly as before
    amd = dict(base, waves_per_eu=2, matrix_instr_nonkdim=16)
    common = kernels._static_args(amd, 4, 32, 128, 512, False, False, False)[-1]
    assert (common["waves_per_eu"], common["matrix_instr_nonkdim"]) == (2, 16) and "kpack" not in common


def test_no_entry_point_and_no_triton_import():
    import subprocess
    import sys

    code = ("import sys; sys.modules['triton'] = None\n"
            "import quantlinear_triton, quantlinear_triton.ops, quantlinear_triton.tune, quantlinear_triton.layers, quantlinear_triton.packing\n"
            "print('OK')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert project["name"] == "quantlinear-triton" and "entry-points" not in project


def test_fast_launch_caches_per_specialization_and_verifies(monkeypatch):
    """The direct launcher (no GPU here: tensor stand-ins, a fake JIT function and compiled kernel)."""
    from types import SimpleNamespace

    from quantlinear_triton import launch as fl

    class T:  # what the launcher reads of a tensor
        is_cuda = True

        def __init__(self, ptr, dtype=torch.float16):
            self.ptr, self.dtype, self.device = ptr, dtype, SimpleNamespace(index=0)

        def data_ptr(self):
            return self.ptr

        def get_device(self):
            return self.device.index

    calls = []
    out = torch.zeros(4)

    class CK:
        function, packed_metadata = "fn-handle", "meta"

        def run(self, *a):
            calls.append(("direct", a))
            if bad:
                out.add_(1)

    class Fn:
        arg_names = ["x", "y", "n", "f", "A", "B", "C"]
        params = [SimpleNamespace(name=n, is_constexpr=n.isupper(), has_default=n == "C", default=9) for n in arg_names]

        def __getitem__(self, grid):
            def go(*a, **kw):
                calls.append(("jit", a, kw))
                out.zero_()  # what the normal path writes
                return CK()
            return go

    chain = SimpleNamespace(calls=[])  # an empty HookChain is no hook
    monkeypatch.setattr(fl, "_state", {"ok": True, "knobs": SimpleNamespace(launch_enter_hook=chain, launch_exit_hook=None),
                                       "stream": lambda d: 77})
    for name in ("_compiled", "_const_cache", "_order_ok", "_stats"):
        monkeypatch.setattr(fl, name, {})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    fn, bad = Fn(), False

    def go(ptr=64, n=32, consts=None, o=out, grid=(3, 1, 1)):
        consts = consts or {"B": 2, "A": 1}
        calls.clear()
        fl.launch(fn, grid, (T(ptr), T(128)), (n,), (0.5,), consts, ("cfg", tuple(sorted(consts.items()))), {"num_warps": 4}, o)
        return [c[0] for c in calls]

    assert go() == ["jit"]  # first: the normal path, and its compiled kernel is kept
    assert go() == ["direct", "jit"]  # first direct launch of the process: checked against the normal path
    assert fl._state["verified"] is True
    assert go() == ["direct"]
    a = calls[0][1]
    assert a[:7] == (3, 1, 1, 77, "fn-handle", "meta", None) and a[7:9] == (None, None)
    assert a[11:] == (32, 0.5, 1, 2, 9)  # runtime args, then the constexprs in parameter order (C at its default)
    assert go(consts={"A": 1, "B": 2, "C": 3}) == ["jit"] and go(consts={"A": 1, "B": 2, "C": 3}) == ["direct"]
    assert calls[0][1][11:] == (32, 0.5, 1, 2, 3)
    assert go(consts={"A": 1}) == ["jit"] and go(consts={"A": 1}) == ["jit"]  # B has no default: never cached
    assert go(grid=(5, 2)) == ["direct"] and calls[0][1][:3] == (5, 2, 1)  # a 2-D grid: the launcher gets z = 1
    assert go(grid=(6,)) == ["direct"] and calls[0][1][:3] == (6, 1, 1)
    (name, (direct, normal)), = fl.stats().items()  # per kernel: direct / normal launches so far
    assert (direct, normal) == (5, 5) and "5 direct/5 normal" in fl.stats_line()
    assert fl.stats(reset=True)[name] == (5, 5) and fl.stats()[name] == (0, 0)
    assert go(ptr=72) == ["jit"]  # not 16-byte aligned: another specialization
    assert go(n=1) == ["jit"] and go(n=40) == ["jit"] and go(n=40) == ["direct"] and go(n=48) == ["direct"]  # ==1, %16 classes
    assert go(consts={"A": 5, "B": 2}) == ["jit"]  # other constexprs: another static key
    chain.calls.append(print)  # a profiler's hook: the normal path, which calls it
    assert go() == ["jit"] and "hook" in fl.status()
    chain.calls.clear()
    # a direct launch that disagrees with the normal one turns the fast path off for the process
    fl._state.pop("verified")
    bad = True
    assert go() == ["direct", "jit"] and fl._state["ok"] is False and "disagreed" in fl.status()
    assert go() == ["jit"]


class _FakeGPU:
    """What the direct launcher and a replay read, without a GPU: tensor stand-ins, a JIT function and its compiled
    kernel (the launcher records its calls)."""

    def __init__(self, monkeypatch):
        from types import SimpleNamespace

        from quantlinear_triton import launch as fl

        self.fl, self.calls, self.dev = fl, [], 0
        outer = self

        class T:
            is_cuda = True

            device = "cpu"  # (where a replay allocates a temporary like this one)

            def __init__(self, ptr, dtype=torch.float16, shape=(1, 512)):
                self.ptr, self.dtype, self.shape = ptr, dtype, shape

            def data_ptr(self):
                return self.ptr

            def get_device(self):
                return 0

            def new_empty(self, shape):
                return T(4096 + 512 * len(outer.calls), self.dtype, shape)

        class CK:
            function, packed_metadata = "fn-handle", "meta"

            def run(self, *a):
                outer.calls.append(("direct", a))

        class Fn:
            arg_names = ["x", "w", "y", "n", "A"]
            params = [SimpleNamespace(name=n, is_constexpr=n.isupper(), has_default=False, default=None) for n in arg_names]

            def __getitem__(self, grid):
                def go(*a, **kw):
                    outer.calls.append(("jit", a, kw))
                    return CK()
                return go

        self.T, self.Fn = T, Fn
        self.chain = SimpleNamespace(calls=[])
        monkeypatch.setattr(fl, "_state", {"ok": True, "verified": True, "stream": lambda d: 77, "device": lambda: self.dev,
                                           "knobs": SimpleNamespace(launch_enter_hook=self.chain, launch_exit_hook=None)})
        for name in ("_compiled", "_const_cache", "_order_ok", "_stats"):
            monkeypatch.setattr(fl, name, {})
        monkeypatch.setattr(fl, "_replayable", set())
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)

    def launch(self, fn, x, w, y, n=32):
        self.fl.launch(fn, (3, 2), (x, w, y), (n,), (), {"A": 1}, ("cfg", id(fn)), {"num_warps": 4}, y)


def test_a_replay_relaunches_one_recorded_launch_with_new_activations_and_output(monkeypatch):
    g = _FakeGPU(monkeypatch)
    fl, T = g.fl, g.T
    fn, other = fl.replayable(g.Fn()), g.Fn()
    x, w, y = T(64), T(128), T(256)
    g.launch(fn, x, w, y)  # first launch of this specialization: the normal path (not recorded as direct)
    with fl.recording() as rec:
        g.launch(fn, x, w, y)
    assert fl._local.rec is None and len(rec) == 1 and rec[0][0] is fn
    r = fl.replay_of(rec, x, y, (w,))
    assert not any(a is x or a is y for step in r.steps for a in step[5])  # the plan keeps no activations / output
    x2, y2 = T(512), T(1024)
    g.calls.clear()
    assert r(x2, y2) and g.calls == [("direct", (3, 2, 1, 77, "fn-handle", "meta", None, None, None, x2, w, y2, 32, 1))]
    # what it cannot vouch for: declined, nothing launched (the caller takes the normal path)
    g.calls.clear()
    assert not r(T(72), y2) and not r(x2, T(8))  # another 16-byte alignment: another specialization
    g.chain.calls.append(print)  # a profiler's launch hook
    assert not r(x2, y2)
    g.chain.calls.clear()
    g.dev = 1  # another current device
    assert not r(x2, y2)
    g.dev = 0
    fl._state["ok"] = False  # the fast path switched off since
    assert not r(x2, y2) and g.calls == []
    fl._state["ok"] = True
    # no replay: a kernel not marked replayable, a tensor that is not x / y / a constant, two launches, a normal launch
    with fl.recording() as rec:
        g.launch(other, x, w, y)
        g.launch(other, x, w, y)
    assert fl.replay_of(rec[1:], x, y, (w,)) is None and "not marked replayable" in fl.replay_refusal()
    assert rec[0] is None and fl.replay_of(rec[:1], x, y, (w,)) is None  # (other's first launch: the normal path)
    assert "verified direct" in fl.replay_refusal()
    with fl.recording() as rec:
        g.launch(fn, x, w, y)
    assert fl.replay_of(rec, x, y, ()) is None  # w unknown: it might change between calls
    assert "tensor argument 1" in fl.replay_refusal()
    assert len(fl.replay_of(rec + rec, x, y, (w,)).steps) == 2  # (two launches writing y: both replayed, in order)
    import threading

    with fl.recording() as rec:  # another thread's launches are not this call's
        th = threading.Thread(target=lambda: g.launch(fn, x, w, y))
        th.start()
        th.join()
    assert rec == []
    r.steps = ((lambda *a: 1 / 0, *r.steps[0][1:]),)  # a launcher that raises: declined, the fast path off from then on
    assert not r(x2, y2) and fl._state["ok"] is False and "replay failed" in fl.status()
    assert fl.replay_of(rec, T(64), y, (w,)) is None and fl.replay_of(rec, x, T(256), (w,)) is None  # other objects


def test_a_replay_of_two_launches_allocates_their_temporary_afresh(monkeypatch):
    """The float schemes: the activation kernel writes a temporary (the quantized activations) the GEMV reads."""
    g = _FakeGPU(monkeypatch)
    fl, T = g.fl, g.T
    act, gemv = fl.replayable(g.Fn()), fl.replayable(g.Fn())
    x, w, t, y = T(64), T(128), T(2048, shape=(1, 512)), T(256)
    for _ in range(2):
        with fl.recording() as rec:
            g.launch(act, x, x, t)  # (x as a placeholder argument too)
            g.launch(gemv, t, w, y)
    r = fl.replay_of(rec, x, y, (w,))
    x2, y2 = T(512), T(1024)
    g.calls.clear()
    assert r(x2, y2) and len(g.calls) == 2
    a1, a2 = g.calls[0][1][9:12], g.calls[1][1][9:12]
    assert a1[0] is x2 and a1[1] is x2 and a1[2] is a2[0] and a2[1] is w and a2[2] is y2
    assert a1[2] is not t and tuple(a1[2].shape) == t.shape and a1[2].dtype == t.dtype  # fresh, like the recorded one
    assert r.temps == (((1, 512), torch.float16, "cpu"),)  # (kept as a shape: the recorded temporary is not held)
    # a launch whose output is neither y nor new (here: a constant) is no temporary: no replay
    with fl.recording() as rec:
        g.launch(act, x, x, w)
        g.launch(gemv, w, w, y)
    assert fl.replay_of(rec, x, y, (w,)) is None
    with fl.recording() as rec:
        g.launch(gemv, t, w, y)  # reads a tensor no launch of the call wrote
    assert fl.replay_of(rec, x, y, (w,)) is None


def test_a_replay_rebuilds_the_tma_descriptor_on_the_new_activations(monkeypatch):
    wg = pytest.importorskip("quantlinear_triton.kernels_wg")
    if not wg.HAS_WG:
        pytest.skip("needs Triton's Gluon (Hopper)")
    g = _FakeGPU(monkeypatch)
    fl, T = g.fl, g.T
    Desc = wg._XDesc  # the activations' descriptor, keyed by the launcher like its tensor

    fn = fl.replayable(g.Fn())
    x, w, y = T(64), T(128), T(256)
    d = Desc(x, [4, 512], [512, 1], [64, 64], wg._box_layout(64, 1, False))
    g.launch(fn, d, w, y)
    with fl.recording() as rec:
        g.launch(fn, d, w, y)
    r = fl.replay_of(rec, x, y, (w,))
    x2, y2 = T(512), T(1024)
    g.calls.clear()
    assert r(x2, y2)
    d2 = g.calls[0][1][9]
    assert type(d2) is Desc and d2.base is x2 and (d2.shape, d2.strides, d2.block_shape, d2.layout) == (d.shape, d.strides,
                                                                                                       d.block_shape, d.layout)
    assert d.base is x and r.desc.base is None  # the recorded descriptor is left as it was; the template holds no x


def test_a_layer_plans_its_launch_per_m_and_replans_when_the_configuration_or_weights_change(monkeypatch):
    import copy
    import pickle

    g = _FakeGPU(monkeypatch)
    fl, T = g.fl, g.T
    fn = fl.replayable(g.Fn())

    class Kernels:  # kernels.launch: one launch of fn writing a new output
        launches = 0

        @staticmethod
        def launch(x, qweight, *rest):
            Kernels.launches += 1
            y = x.new_empty((1, 256))
            g.launch(fn, x, qweight, y)
            return y

        @staticmethod
        def persistent_tensors():
            return []

    class Tuner:
        cfg = {"kernel": "gemv16"}

        def settled(self, problem, x):
            return self.cfg

    monkeypatch.setattr(ops, "_kernels", Kernels)
    tuner, plans = Tuner(), ops.PlanCache()
    w, s = T(128, torch.int32, (256, 64)), T(192)

    def call(x, qweight=w):
        g.calls.clear()
        ops.run_gemm(tuner, x, qweight, s, None, None, 4, 128, 512, 32, 8.0, P, plans)
        return [c[0] for c in g.calls], Kernels.launches

    assert call(T(64)) == (["jit"], 1)  # a first launch: the normal path, no plan yet
    assert len(plans) == 0
    assert call(T(64)) == (["direct"], 2)  # recorded: the plan for this M
    assert call(T(64)) == (["direct"], 2) and call(T(576)) == (["direct"], 2)  # replayed: kernels.launch not called
    tuner.cfg = {"kernel": "gemv16", "BN": 64}  # the tuner settled on another configuration: planned again
    assert call(T(64)) == (["direct"], 3) and call(T(64)) == (["direct"], 3)
    assert call(T(64), qweight=T(128, torch.int32, (256, 64))) == (["direct"], 4)  # other weight tensors: planned again
    assert call(T(72)) == (["jit"], 5)  # the replay declined (alignment): the normal path
    assert len(plans) == 1 and len(copy.deepcopy(plans)) == 0 and len(pickle.loads(pickle.dumps(plans))) == 0
    tuner.cfg = {"kernel": "dqmm-like"}  # a call that is no single replayable launch: planned without a replay
    other = g.Fn()  # say, a dequantization into a temporary, then a matmul the launcher never sees
    Kernels.launch = staticmethod(lambda x, qweight, *rest: (g.launch(other, x, qweight, x.new_empty((1, 256))),
                                                             x.new_empty((1, 256)))[1])
    call(T(64)), call(T(64))
    assert plans[(1, 0, torch.float16)].replay is None and call(T(64))[0] == ["direct"]  # the normal path each time


@pytest.mark.skipif(not interpreting(), reason="imports the kernels module under the interpreter")
def test_programmatic_dependent_launch_only_for_the_decode_kernels_on_sm90(monkeypatch):
    """The GEMVs launch with PDL (``launch_pdl`` and the ``PDL`` constexpr) where ``pdl_ok``; other kernels never."""
    from quantlinear_triton import kernels

    x = torch.zeros(1, 512)
    assert not kernels.pdl_ok(x)  # CPU / interpreter: never
    for cap, env, expected in (((9, 0), "1", True), ((10, 0), "1", True), ((8, 9), "1", False), ((9, 0), "0", False)):
        kernels._pdl_dev.clear()
        monkeypatch.setattr(kernels, "_asm_ok", lambda t: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=cap: c)
        monkeypatch.setenv("QUANTLINEAR_PDL", env)
        assert kernels.pdl_ok(x) is (expected and kernels.HAS_GDC), (cap, env)
    kernels._pdl_dev.clear()
    for kind, extra in (("gemv16", {}), ("gemv", {}), ("dot", {"swap": True, "group_m": 8}), ("dot16", {"swap": True, "group_m": 8})):
        cfg = {"kernel": kind, "BM": 1 if kind.startswith("gemv") else 16, "BN": 32, "split_k": 2, "warps": 4, "stages": 2, **extra}
        st = kernels._static_args(cfg, 4, 32, 128, 512, False, False, False, torch.float16, True)
        opts, consts = st[6], st[5]
        decode = kind in ("gemv", "gemv16")
        assert opts.get("launch_pdl", False) is decode and consts.get("PDL", False) is decode, kind
        plain = kernels._static_args(cfg, 4, 32, 128, 512, False, False, False, torch.float16, False)
        assert "launch_pdl" not in plain[6] and not plain[5].get("PDL", False)


@pytest.mark.skipif(not interpreting(), reason="the fp kernels module under the interpreter")
def test_float_decode_and_activation_kernels_take_pdl(monkeypatch):
    from quantlinear_triton import fp_kernels as FK
    from quantlinear_triton import fp_packing as P

    for kind in ("gemv16", "gemv", "dot"):
        cfg = {"kernel": kind, "BM": 1 if kind != "dot" else 16, "BN": 32, "split_k": 2, "warps": 4, "stages": 2}
        common = FK._static_args(cfg, P.E2M1, P.S_E8M0, 32, 512, False, False, torch.float16, True)[6]
        assert common.get("launch_pdl", False) is (kind != "dot") and common.get("PDL", False) is (kind != "dot")
        assert "launch_pdl" not in FK._static_args(cfg, P.E2M1, P.S_E8M0, 32, 512, False, False, torch.float16, False)[6]
    seen = []
    monkeypatch.setattr(FK, "pdl_ok", lambda x: True)
    monkeypatch.setattr(FK, "_act_quant_kernel", type("K", (), {"__getitem__": lambda self, g: lambda *a, **kw: seen.append(kw)})())
    FK.quantize_activations_split(torch.zeros(1, 512), P.A_MX_E2M1, 32, None)
    FK.quantize_activations(torch.zeros(1, 512), P.A_MX_E2M1, 32, None)
    assert [(kw["PDL"], kw["launch_pdl"]) for kw in seen] == [(True, True), (True, True)]


_PDL_COMPILE = """
import torch, triton
from triton.backends.compiler import GPUTarget
from quantlinear_triton import aot, kernels
x, q, s = torch.zeros(1, 512, dtype=torch.float16), torch.zeros(64, 64, dtype=torch.int32), torch.ones(4, 64, dtype=torch.float16)
cfg = {"kernel": "gemv16", "BM": 1, "BN": 32, "split_k": 2, "warps": 4, "stages": 2}
for pdl in (True, False):
    st = kernels._static_args(cfg, 4, 32, 128, 512, False, False, False, torch.float16, pdl)
    args = (x, q, s, s, s, x, torch.zeros(64), torch.zeros(64, dtype=torch.int32), 1, 64, 512, 64, 128, 1, 2, 0x64086408, 8388616.0)
    src, opts = aot.source(kernels._gemv16_kernel, args, dict(st[5], USE_SPLIT=True, ASM=True), ())
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=2)).asm["ptx"]
    wait, release = ptx.find("griddepcontrol.wait"), ptx.find("griddepcontrol.launch_dependents")
    print(pdl, wait >= 0, release >= 0, "ld.global" in ptx[wait:release] if wait >= 0 else None)
"""


def test_pdl_gemv_cross_compiles_for_sm90_with_griddepcontrol():
    """With PDL the GEMV's sm90 PTX waits on the previous grid before its loads and releases the next one after them
    (after the main loop); without, neither.
    (A compile without a GPU: Triton ships ptxas; in a subprocess, as the interpreter cannot compile.)"""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0")
    r = subprocess.run([sys.executable, "-c", _PDL_COMPILE], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split("\n")[:2] == ["True True True True", "False False False None"], r.stdout


@pytest.mark.skipif(not interpreting(), reason="the check runs under the interpreter (CI)")
def test_under_the_interpreter_a_launch_that_could_never_be_cached_fails():
    """Every launch in CI is checked as the GPU path checks it before caching a launcher: a constexpr neither given
    nor defaulted (a kernel that gained one its launch does not pass) raises instead of silently costing 25-45 us of
    host time per call on a GPU."""
    import triton
    import triton.language as tl

    from quantlinear_triton import launch as fl

    @triton.jit
    def _double(x_ptr, y_ptr, n, A: tl.constexpr, B: tl.constexpr = 1):
        i = tl.arange(0, A)
        tl.store(y_ptr + i, tl.load(x_ptr + i, mask=i < n) * 2 * B, mask=i < n)

    x, y = torch.arange(4.0), torch.zeros(4)
    fl.launch(_double, (1,), (x, y), (4,), (), {"A": 4}, ("double", 4), {}, y)  # B at its default: fine
    assert torch.equal(y, x * 2)
    fl.launch(_double, (1,), (x, y), (4,), (), {"A": 4, "B": 3}, ("double", 4, 3), {}, y)
    assert torch.equal(y, x * 6)
    with pytest.raises(fl.LaunchArgumentsError, match=r"_double.*neither given nor defaulted \['A'\]"):
        fl.launch(_double, (1,), (x, y), (4,), (), {"B": 1}, ("double", 1), {}, y)
    with pytest.raises(fl.LaunchArgumentsError, match="out of place"):  # n passed as a constexpr: Triton would specialize
        fl.launch(_double, (1,), (x, y), (), (), {"n": 4, "A": 4}, ("double", "n"), {}, y)
