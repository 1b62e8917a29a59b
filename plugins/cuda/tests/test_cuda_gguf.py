"""``cuda.triton_gguf``: selection reasons, the GGUF conformance kit, the custom op and torch.compile.

Without a GPU the kernels run in Triton's interpreter on CPU tensors through the plugin's
test-only CPU switch (conftest.py), in fp16/fp32 only (the interpreter mis-loads bf16); on a CUDA
machine the same tests run compiled on the GPU, bf16 included.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import quantlinear_cuda.gguf_ops  # noqa: F401  (registers the op)
from quantlinear import LayerSpec, Scheme, select_kernel
from quantlinear.formats.gguf import gguf_scheme
from quantlinear.gguf_random import random_gguf_weights
from quantlinear.testing import Case
from quantlinear.testing_gguf import GGUFKernelConformance, claimed_gguf_cases, gguf_reference
from quantlinear_cuda import device as cuda_device
from quantlinear_cuda.device import DeviceProps
from quantlinear_cuda.kernels.triton_gguf import TritonGGUFLinear

from cuda_testutil import DEV, GPU, SM70, SM75, SM90, TOL, rel_err, simulate

OP = torch.ops.quantlinear_cuda.gguf_gemm


# ---- selection, with simulated devices (the `reg` fixture: conftest.py) ---------------------------------
def gspec(qtype="Q4_K", dtype=torch.float16, K=4096, N=4096, scheme=None):
    return LayerSpec(scheme or gguf_scheme(qtype), "gguf_" + qtype.lower(), K, N, dtype=dtype, device=torch.device("cuda"))


def verdicts(reg, s):
    sel = select_kernel(s, registry=reg, raise_on_none=False)
    return sel.kernel.name if sel.kernel else None, {c.kernel: c.verdict for c in sel.candidates}


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sm90_picks_triton_gguf(monkeypatch, reg, qtype, dtype):
    simulate(monkeypatch, SM90)
    chosen, v = verdicts(reg, gspec(qtype, dtype))
    assert chosen == "cuda.triton_gguf"
    assert "data_type=gguf" in v["cuda.triton"].reason  # the int kernels say why not


def test_unimplemented_types_are_explained(monkeypatch, reg):
    simulate(monkeypatch, SM90)
    for qtype, words in (("Q2_K", "bits=2"), ("Q3_K", "bits=3")):
        chosen, v = verdicts(reg, gspec(qtype))
        assert chosen is None and words in v["cuda.triton_gguf"].reason
    # a scheme that is not its format's type
    v = TritonGGUFLinear.can_implement(gspec("Q4_K", scheme=Scheme(bits=4, group_size=32, sym=True, data_type="gguf")))
    assert not v and "gguf_q4_k stores Q4_K" in v.reason


def test_capability_and_triton_reasons(monkeypatch, reg):
    simulate(monkeypatch, SM75)
    assert verdicts(reg, gspec(dtype=torch.float16))[0] == "cuda.triton_gguf"
    chosen, v = verdicts(reg, gspec(dtype=torch.bfloat16))
    assert chosen is None and "8.0" in v["cuda.triton_gguf"].reason and "sm75" in v["cuda.triton_gguf"].reason
    simulate(monkeypatch, SM70)
    _, v = verdicts(reg, gspec())
    assert "7.5" in v["cuda.triton_gguf"].reason
    simulate(monkeypatch, SM90, triton=False)
    _, v = verdicts(reg, gspec())
    assert "Triton is not installed" in v["cuda.triton_gguf"].reason
    simulate(monkeypatch, DeviceProps("AMD Instinct MI300X", (9, 4), hip=True))
    _, v = verdicts(reg, gspec())
    assert "ROCm" in v["cuda.triton_gguf"].reason


def test_rocm_build_refused(monkeypatch):
    simulate(monkeypatch, SM90)
    monkeypatch.setattr(torch.version, "hip", "6.2.41133", raising=False)
    v = TritonGGUFLinear.check(gspec())
    assert not v and "ROCm" in v.reason


# ---- the conformance kit (LayerSpec-built layers; CPU: through the interpreter switch) --------------------
def _cases(kernel, device):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cuda_device, "CPU_INTERPRET", None if GPU else True)
        cases = claimed_gguf_cases(kernel, device)
    return cases if GPU else [c for c in cases if c.spec.dtype != torch.bfloat16]


class TestTritonGGUFConformance(GGUFKernelConformance):
    kernels = [TritonGGUFLinear]
    device = "cuda" if GPU else "cpu"
    cases_for = staticmethod(_cases)


def test_conformance_covers_every_type():
    fmts = {c.spec.format for c in _cases(TritonGGUFLinear, "cuda" if GPU else "cpu")}
    assert fmts == set(TritonGGUFLinear.formats)


# ---- the custom op --------------------------------------------------------------------------------------
def small_layer(qtype="Q4_K", dtype=torch.float16, bias=True, K=256, N=48):
    spec = LayerSpec(gguf_scheme(qtype), "gguf_" + qtype.lower(), K, N, bias=bias, dtype=dtype, device=DEV, name="t")
    w = random_gguf_weights(qtype, K, N, seed=11)
    b = (torch.randn(N, generator=torch.Generator().manual_seed(3)) * 0.1).to(dtype) if bias else None
    return TritonGGUFLinear.from_weights(spec, w, b), w, b


def op_args(layer, x):
    return (x, layer.gguf_qs, layer.gguf_qh, layer.gguf_sm, layer.gguf_bm, layer.bias, layer.qtype)


def test_schema_and_fake():
    from torch._subclasses.fake_tensor import FakeTensorMode

    schema = str(OP.default._schema)
    assert schema == ("quantlinear_cuda::gguf_gemm(Tensor x, Tensor qs, Tensor? qh, Tensor sm, Tensor? bm, Tensor? bias, "
                      "str qtype) -> Tensor")
    layer, _, _ = small_layer("Q5_K")
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        y = OP(*op_args(layer, mode.from_tensor(torch.randn(7, 256, dtype=torch.float16, device=DEV))))
        assert y.shape == (7, 48) and y.dtype == torch.float16
    meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in op_args(layer, torch.randn(3, 256, dtype=torch.float16))]
    assert OP(*meta).shape == (3, 48)
    bad = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in op_args(layer, torch.randn(3, 512, dtype=torch.float16))]
    with pytest.raises(Exception, match="features"):
        OP(*bad)


@pytest.mark.parametrize("qtype,bias", [("Q4_K", True), ("Q8_0", False), ("Q6_K", True)])
def test_opcheck(qtype, bias):
    layer, _, _ = small_layer(qtype, bias=bias, N=32)
    x = torch.randn(2, 256, dtype=torch.float16, device=DEV)
    torch.library.opcheck(OP, op_args(layer, x), test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_op_matches_layer_and_reference():
    layer, w, b = small_layer("Q5_1")
    x = torch.randn(5, 256, dtype=torch.float16, device=DEV)
    y_op = OP(*op_args(layer, x))
    assert torch.equal(y_op, layer(x))
    assert rel_err(y_op, gguf_reference(x, w, b)) < TOL[torch.float16]


def test_compile_fullgraph_no_graph_break():
    """fullgraph=True fails on any graph break; aot_eager traces through the fake impl on CPU too."""
    layer, w, b = small_layer("Q4_K")
    f = torch.compile(lambda x: torch.relu(layer(x * 2.0)) - 1.0, fullgraph=True, backend="inductor" if GPU else "aot_eager")
    for M in (4, 1):  # the op dispatches GEMV / dot inside, so a new M needs no new graph logic
        x = torch.randn(M, 256, dtype=torch.float16, device=DEV)
        ref = torch.relu(gguf_reference(x * 2.0, w, b).half().float()) - 1.0
        assert rel_err(f(x), ref) < TOL[torch.float16]


def test_layer_on_cpu_without_switch_is_refused(monkeypatch):
    s = LayerSpec(gguf_scheme("Q4_K"), "gguf_q4_k", 256, 32, device=torch.device("cpu"))
    monkeypatch.setattr(cuda_device, "CPU_INTERPRET", False)
    v = TritonGGUFLinear.can_implement(s)
    assert not v and "not cpu" in v.reason
    monkeypatch.setattr(cuda_device, "CPU_INTERPRET", True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert TritonGGUFLinear.can_implement(s)


def test_explicit_case_runs_all_paths():
    """One LayerSpec-built layer through GEMV (M=1) and the tensor-core path (M=6), 3-D input, bias."""
    layer, w, b = small_layer("Q6_K", dtype=torch.float32, K=512, N=40)
    for shape in ((1, 512), (2, 3, 512)):
        x = torch.randn(*shape, device=DEV)
        assert rel_err(layer(x), gguf_reference(x, w, b)) < TOL[torch.float32]
    assert Case(TritonGGUFLinear, layer.spec).spec.format == "gguf_q6_k"


# ---- default configurations -----------------------------------------------------------------------------
def test_default_configs_per_m():
    """fp16 decode: the paired-fp16 GEMV; bf16 / fp32: the general one; up to 256 rows: dot; from 257 (fp16/bf16): dqmm."""
    from quantlinear_cuda import gguf_ops
    from quantlinear_triton.gguf_tune import DQMM_FROM, GGUFProblem

    assert DQMM_FROM == 512
    for dtype in ("float16", "bfloat16", "float32"):
        p = GGUFProblem("Q4_K", dtype, 14336, 4096)
        kinds = {M: gguf_ops.SPACE.default_config(p, M, SM90)["kernel"] for M in (1, 2, 16, 64, 65, 256, 257, 4096)}
        dq = "dot" if dtype == "float32" else "dqmm"
        assert kinds == {1: "gemv16" if dtype == "float16" else "gemv", 2: "dot", 16: "dot", 64: "dot", 65: "dot", 256: "dot", 257: dq,
                         4096: dq}, dtype
    p = GGUFProblem("Q4_K", "float16", 14336, 4096)
    c1 = gguf_ops.SPACE.candidates(p, 1, SM90)
    assert {c["kernel"] for c in c1} == {"gemv", "gemv16"}
    c16 = gguf_ops.SPACE.candidates(p, 16, SM90)
    assert {c.get("MR") for c in c16 if c["kernel"] == "gemv16"} == {4, 8}
    assert not any(c["kernel"] == "gemv16" for c in gguf_ops.SPACE.candidates(GGUFProblem("Q4_K", "bfloat16", 14336, 4096), 16, SM90))


# ---- the paired-fp16 GEMV compiles for sm90 (PTX inline assembly; no GPU needed) ----------------------------
COMPILE_JOBS = [  # (type, configuration, M)
    ("Q4_K", {"kernel": "gemv16", "BN": 64, "split_k": 4, "warps": 4}, 1),
    ("Q4_K", {"kernel": "gemv16", "BN": 64, "split_k": 4, "warps": 4, "sr": True, "hsum": True}, 1),
    ("Q4_K", {"kernel": "gemv16", "BN": 32, "split_k": 2, "warps": 4, "MR": 4}, 16),
    ("Q6_K", {"kernel": "gemv16", "BN": 64, "split_k": 4, "warps": 4}, 1),
    ("Q8_0", {"kernel": "gemv16", "BN": 64, "split_k": 4, "warps": 4, "sr": False}, 1),
    ("Q5_0", {"kernel": "gemv16", "BN": 64, "split_k": 1, "warps": 4, "sr": True}, 1),
    ("Q4_1", {"kernel": "gemv16", "BN": 32, "split_k": 1, "warps": 2, "MR": 2}, 3),
]


def compile_gemv16_jobs(jobs) -> list[dict]:
    """Compile each job's gemv16 launch with ASM on for sm90 (run with TRITON_INTERPRET off): its PTX facts."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from quantlinear_triton import gguf_kernels as gk
    from quantlinear_triton import gguf_packing as gp

    ty = {torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32", torch.uint8: "u8", torch.int16: "i16"}
    out = []
    for qtype, cfg, M in jobs:
        K, N = 4096, 256
        p = gp.repack(qtype, random_gguf_weights(qtype, K, N, seed=0).data, K)
        log = []
        saved = gk._fast.launch
        gk._fast.launch = lambda fn, grid, tensors, ints, floats, consts, key, opts, out=None: log.append((fn, tensors, ints, consts, opts))
        try:
            gk.launch(torch.zeros(M, K, dtype=torch.float16), p.qs, p.qh, p.sm, p.bm, None, qtype, cfg,
                      out=torch.empty(M, N, dtype=torch.float16))
        finally:
            gk._fast.launch = saved
        (fn, tensors, ints, consts, opts), = log
        consts = dict(consts, ASM=True)
        names = fn.arg_names
        sig, attrs = {}, {}
        for i, v in enumerate(tensors):
            sig[names[i]], attrs[(i,)] = "*" + ty[v.dtype], [["tt.divisibility", 16]]
        for j, v in enumerate(ints):
            sig[names[len(tensors) + j]] = "i32"
        sig.update({k: "constexpr" for k in consts})
        c = triton.compile(ASTSource(fn, {n: sig[n] for n in names}, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                           options=opts)
        ptx = c.asm["ptx"]
        out.append({"kernel": fn.__name__, "f16x2_fma": ptx.count("fma.rn.f16x2"), "f16x2_sub": ptx.count("sub.f16x2"),
                    "num_warps": c.metadata.num_warps, "sr": consts["SR"], "MR": consts["MR"]})
    return out


def test_gemv16_compiles_for_sm90():
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "QUANTLINEAR_CUDA_CPU_INTERPRET")}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    r = subprocess.run([sys.executable, str(Path(__file__))], env=env, capture_output=True, text=True, timeout=300,
                       cwd=str(Path(__file__).parent))
    assert r.returncode == 0, r.stderr[-3000:]
    res = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(res) == len(COMPILE_JOBS)
    for (qtype, cfg, M), got in zip(COMPILE_JOBS, res):
        assert got["kernel"] == "_gemv16_kernel" and got["num_warps"] == cfg["warps"] and got["MR"] == cfg.get("MR", 1)
        # the inline assembly is there, and every code pair is decoded scaled (an FMA with 2**-k, no plain subtraction)
        assert got["f16x2_fma"] > 0 and got["f16x2_sub"] == 0, (qtype, cfg, got)


def test_variants_script_smoke(tmp_path):
    """benchmarks/gguf_variants.py end to end on CPU through the interpreter (tiny shape): every variant runs and is right."""
    if GPU:
        pytest.skip("the GPU run of the script is the benchmark itself")
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        import gguf_variants
    finally:
        sys.path.pop(0)
    rows = []
    for types, ms in (("Q4_K", "1,16,64"), ("Q8_0", "1")):
        out = tmp_path / f"{types}.json"
        assert gguf_variants.main(["--cpu-smoke", "--types", types, "--shapes", "256x48", "--ms", ms, "--deadline", "900", str(out)]) == 0
        res = json.loads(out.read_text())
        assert res["skipped_rows"] == 0
        rows += [r for r in res["rows"] if r["kernel"] == "cuda.triton_gguf"]
    assert not any("error" in r for r in rows), [r["error"] for r in rows if "error" in r]
    names = {(r["qtype"], r["M"], r["variant"]) for r in rows}
    assert ("Q4_K", 1, "gemv16 BN128 hsum") in names and ("Q4_K", 16, "gemv16 MR8") in names and ("Q4_K", 64, "dqmm") in names
    assert ("Q8_0", 1, "gemv16 other-order") in names and len(rows) == 8 + 5 + 2 + 8
    assert all(r["rel_err"] < 1e-3 for r in rows), [(r["variant"], r["rel_err"]) for r in rows if r["rel_err"] >= 1e-3]


if __name__ == "__main__":  # the compile check's subprocess (TRITON_INTERPRET off)
    for r in compile_gemv16_jobs(COMPILE_JOBS):
        print(json.dumps(r), flush=True)
