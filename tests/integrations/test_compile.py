"""``torch.compile`` on models loaded by ``quantlinear.from_pretrained``.

A quantized layer compiles with ``fullgraph=True`` (no graph break inside a kernel's forward)
for each CPU kernel; a whole tiny Llama compiles and gives the eager logits.  The
``aot_eager`` backend traces through Dynamo and AOTAutograd like inductor does, without the C++
compile time, to keep CI fast.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

import quantlinear  # noqa: E402
from quantlinear import QuantLinear  # noqa: E402

from . import helpers  # noqa: E402
from .helpers import rel_err, record  # noqa: E402


@pytest.fixture(scope="module")
def llama_rtn(tmp_path_factory):
    """A tiny Llama written by quantlinear's own AutoRound-format writer: W4 g32 plus 8-bit down_proj."""
    d = tmp_path_factory.mktemp("compile") / "llama"
    quantlinear.save_quantized(helpers.build_llm("llama"), d, quantlinear.Scheme(bits=4, group_size=32),
                               layer_config={r"mlp\.down_proj": {"bits": 8, "group_size": -1}}, dtype=torch.float32)
    return d


def _one_layer_per_kernel(model):
    out = {}
    for n, m in sorted(model.named_modules()):
        if isinstance(m, QuantLinear):
            out.setdefault(m.name, (n, m))
    return out


@pytest.mark.parametrize("dtype,backend", [(torch.float32, "auto"), (torch.bfloat16, "auto"), (torch.float32, "cpu.dequant")])
def test_quantized_layers_compile_fullgraph(llama_rtn, dtype, backend):
    """Every kernel the load picked (4-bit and 8-bit layers) compiles without a graph break."""
    torch._dynamo.reset()
    model = quantlinear.from_pretrained(llama_rtn, device="cpu", dtype=dtype, backend=backend)
    kernels = _one_layer_per_kernel(model)
    assert kernels and sum(model.quantlinear_report.kernel_counts().values()) == 14
    for kernel, (name, layer) in kernels.items():
        x = torch.randn(3, 5, layer.in_features, generator=torch.Generator().manual_seed(0)).to(dtype)
        with torch.no_grad():
            eager = layer(x)
            got = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
        err = rel_err(got, eager)
        record(f"compile_fullgraph:{kernel}:{str(dtype)[6:]}", layer=name, vs_eager=err)
        assert err < (1e-5 if dtype == torch.float32 else 1e-2), (kernel, err)


def test_whole_model_compiles(llama_rtn):
    torch._dynamo.reset()
    model = quantlinear.from_pretrained(llama_rtn, device="cpu", dtype=torch.float32)
    kernels = model.quantlinear_report.kernel_counts()
    eager = helpers.llm_logits(model)
    compiled = torch.compile(model, backend="aot_eager")
    got = helpers.llm_logits(compiled)
    err = rel_err(got, eager)
    # Dynamo really traced the model: graphs were captured, and none broke inside a quantized layer
    explained = torch._dynamo.explain(model)(helpers.INPUT_IDS)
    assert explained.graph_count >= 1
    in_kernels = [r for r in explained.break_reasons if any("quantlinear" in str(f.filename) for f in r.user_stack)]
    assert not in_kernels, in_kernels
    record("compile_whole_llama_aot_eager", vs_eager=err, kernels=kernels, graphs=explained.graph_count,
           graph_breaks=explained.graph_break_count)
    assert err < 1e-5, err
