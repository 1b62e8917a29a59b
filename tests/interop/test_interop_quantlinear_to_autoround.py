"""The other direction: checkpoints written by ``quantlinear.save_quantized`` load in
transformers through AutoRound's loader with no missing/unexpected keys, and AutoRound's
logits match quantlinear's (< 2e-2) and the exact dequantization of the files."""

from __future__ import annotations

import pytest

pytest.importorskip("auto_round")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import quantlinear  # noqa: E402

from . import helpers  # noqa: E402
from .helpers import TOL_VS_AUTOROUND, TOL_VS_EXACT, Variant, rel_err, record  # noqa: E402

pytestmark = pytest.mark.interop

# id, arch, scheme, layer_config, expected packing_format, layers kept in float
CASES = [
    ("w4a16", "llama", "W4A16", None, "auto_round:auto_gptq", ()),
    ("w4g64_asym_awq_bias", "qwen2", quantlinear.Scheme(bits=4, group_size=64, sym=False), None, "auto_round:auto_awq", ()),
    ("w8a16", "llama", "W8A16", None, "auto_round:auto_gptq", ()),
    ("w2g32_asym", "llama", quantlinear.Scheme(bits=2, group_size=32, sym=False), None, "auto_round", ()),
    ("w4a16_mixed", "llama", "W4A16",
     {"mlp.down_proj": {"bits": 8}, "model.layers.1.self_attn.o_proj": {"bits": 16}},
     "auto_round:auto_gptq", ("model.layers.1.self_attn.o_proj",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_quantlinear_checkpoint_loads_in_autoround(tmp_path, case):
    cid, arch, scheme, layer_config, packing, float_layers = case
    model = helpers.build_model(arch)
    out = quantlinear.save_quantized(model, tmp_path / cid, scheme, layer_config=layer_config)
    s = quantlinear.get_scheme(scheme)
    v = Variant(f"roundtrip:{cid}", s.bits, s.group_size, s.sym, "quantlinear", "auto-round", packing,
                arch=arch, float_layers=float_layers)
    exp = helpers.Export(v, out)
    assert exp.qcfg["packing_format"] == packing

    ref = exp.reference
    info = {k: sorted(map(str, val)) for k, val in ref.info.items() if val}
    assert not info, f"AutoRound's loader reported problems loading quantlinear's checkpoint: {info}"
    for name, cls in ref.backends.items():
        assert cls.rsplit(".", 1)[-1] != "Linear", f"{name} was not replaced by an AutoRound QuantLinear"
    for f in float_layers:
        assert f in ref.float_linear and f"{f}.weight" in exp.tensors

    ql = exp.quantlinear_logits("auto")
    vs_ar = rel_err(ql, ref.logits)
    vs_exact = rel_err(ql, exp.exact_logits)
    ar_vs_exact = rel_err(ref.logits, exp.exact_logits)
    worst_layer = max(rel_err(ref.layer_weights[n], raw.dequantize()) for n, raw in exp.raw_layers.items())
    backends = sorted({c.split(".")[0] + "." + c.rsplit(".", 1)[-1] for c in ref.backends.values()})
    record(v.id, packing=packing, autoround_backend=",".join(backends), ql_auto_vs_autoround=vs_ar,
           ql_auto_vs_exact=vs_exact, autoround_vs_exact=ar_vs_exact, layer_max_rel_vs_autoround_layer=worst_layer)
    assert vs_ar < TOL_VS_AUTOROUND, f"{cid}: AutoRound's logits vs quantlinear's {vs_ar:.2e}"
    assert vs_exact < TOL_VS_EXACT, f"{cid}: quantlinear vs exact {vs_exact:.2e}"
    assert worst_layer < 4e-3, f"{cid}: an AutoRound layer applies a different weight ({worst_layer:.2e})"
    # the float layers quantlinear kept are plain nn.Linear on both sides
    qlm = exp.quantlinear_model("auto")
    for f in float_layers:
        assert type(qlm.get_submodule(f)) is nn.Linear
        assert torch.equal(qlm.get_submodule(f).weight, exp.tensors[f"{f}.weight"].float())
