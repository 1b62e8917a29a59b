"""quantlinear reads the floating-point / microscaling exports of the real AutoRound exactly.

For each of MXFP4, MXFP4_RCEIL, MXFP8, MXINT4, NVFP4, FPW8A16 and FP8_STATIC, the real
``auto_round`` package (RTN: ``iters=0, disable_opt_rtn=True``; calibration text for the
static schemes) quantizes a tiny bf16 Llama and writes its ``auto_round`` export.  Then:

* the config maps to the expected layout and preset, every layer holds the expected tensors;
* quantlinear's reference quantizer, run on the original float weights, reproduces the
  export byte for byte (codes, scales, NVFP4 fused global scales); decoding the export and
  re-encoding the dequantized weight gives the same bytes back;
* every quantized layer loaded by ``quantlinear.load_quantized`` (CPU kernels) matches
  AutoRound's own inference module for that layer (``auto_round.experimental.qmodules``, fed the
  export's tensors) on activations away from rounding midpoints, in bf16 and fp32;
* whole-model logits match AutoRound's loader (transformers ``from_pretrained``).

Measured errors are printed at the end of the session (and kept in ``FP_RESULTS``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("auto_round")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import quantlinear  # noqa: E402
from quantlinear import fpcodes, fpquant  # noqa: E402
from quantlinear.config import read_quant_config  # noqa: E402
from quantlinear.formats import get_format  # noqa: E402
from quantlinear.scheme import PRESETS  # noqa: E402

pytestmark = pytest.mark.interop

SCHEMES = {"MXFP4": "mxfp4", "MXFP4_RCEIL": "mxfp4", "MXFP8": "mxfp8", "MXINT4": "mxint4",
           "NVFP4": "nvfp4", "FPW8A16": "fp8", "FP8_STATIC": "fp8"}
KERNEL = {"mxfp4": "cpu.mx", "mxfp8": "cpu.mx", "mxint4": "cpu.mx", "nvfp4": "cpu.nvfp4", "fp8": "cpu.fp8"}
ACT_SCHEMES = {"MXFP4", "MXFP4_RCEIL", "MXFP8", "MXINT4", "NVFP4", "FP8_STATIC"}
VOCAB = 256
IDS = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1234))

#: measured errors: scheme -> metric -> value
FP_RESULTS: dict[str, dict[str, object]] = {}


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def record(scheme: str, **kw) -> None:
    FP_RESULTS.setdefault(scheme, {}).update(kw)


@pytest.fixture(scope="module", autouse=True)
def _print_fp_results(request):
    yield
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is None or not FP_RESULTS:
        return
    tr.section("quantlinear interop, floating-point schemes: measured max|diff|/max|ref|")
    for s in SCHEMES:
        if s in FP_RESULTS:
            tr.write_line(f"{s:12s} " + "  ".join(f"{k}={v:.1e}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(FP_RESULTS[s].items())))


# ---- the exports -----------------------------------------------------------------------------------
def _model_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def _build_model():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(_model_config()).to(torch.bfloat16).eval()


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    vocab["[UNK]"] = 0
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[UNK]", eos_token="[UNK]")


class FPExports:
    """One AutoRound export per scheme, made on first use and shared by the session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dirs: dict[str, Path] = {}
        self.original = {k: v.clone() for k, v in _build_model().state_dict().items()}

    def get(self, scheme: str) -> Path:
        if scheme not in self._dirs:
            from auto_round import AutoRound

            text = [" ".join(f"w{(i * 7 + j) % VOCAB}" for j in range(40)) for i in range(16)]
            ar = AutoRound(_build_model(), _tokenizer(), scheme=scheme, iters=0, disable_opt_rtn=True, device_map="cpu",
                           dataset=text, seqlen=32, nsamples=8)
            out = self.root / scheme
            ar.quantize_and_save(str(out), format="auto_round")
            found = sorted(p.parent for p in out.rglob("config.json"))
            assert len(found) == 1, f"expected one export under {out}, found {found}"
            self._dirs[scheme] = found[0]
        return self._dirs[scheme]


@pytest.fixture(scope="session")
def fp_exports(tmp_path_factory):
    return FPExports(tmp_path_factory.mktemp("autoround-fp-exports"))


def _tensors(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _layers(sd) -> dict[str, dict[str, torch.Tensor]]:
    """Quantized layer -> its tensors (by suffix)."""
    names = sorted({k.rsplit(".", 1)[0] for k in sd if k.endswith((".weight_packed", ".weight_scale"))})
    return {n: {k.rsplit(".", 1)[1]: v for k, v in sd.items() if k.rsplit(".", 1)[0] == n} for n in names}


def _spec(scheme: str, t: dict[str, torch.Tensor], name: str, dtype=torch.bfloat16) -> quantlinear.LayerSpec:
    fmt = get_format(SCHEMES[scheme])
    K, N = fmt.infer_features({k: tuple(v.shape) for k, v in t.items()}, PRESETS[scheme].bits)
    return quantlinear.LayerSpec(PRESETS[scheme], SCHEMES[scheme], K, N, "bias" in t, dtype, "cpu", False, name)


def _load(d: Path, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(d))
    with quantlinear.skeleton():
        m = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return quantlinear.load_quantized(m, d, backend="auto", device="cpu", dtype=dtype).eval()


def _u8(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype.itemsize == 1 else t


# ---- config and layout -----------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_config_maps_to_the_layout_and_preset(fp_exports, scheme):
    d = fp_exports.get(scheme)
    qc, _ = read_quant_config(d)
    raw = json.loads((d / "quantization_config.json").read_text())
    assert raw["autoround_version"] == "0.16.1"
    assert qc.format == SCHEMES[scheme] and qc.scheme == PRESETS[scheme]
    layers = _layers(_tensors(d))
    assert len(layers) == 7  # q k v o gate up down; lm_head stays bf16
    for name, t in layers.items():
        spec = _spec(scheme, t, name)
        get_format(spec.format).validate(t, spec)  # names, shapes and dtypes exactly as documented


# ---- bytes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_reference_quantizer_reproduces_the_export_bytes(fp_exports, scheme):
    d = fp_exports.get(scheme)
    layers = _layers(_tensors(d))
    orig = fp_exports.original
    for name, t in layers.items():
        spec = _spec(scheme, t, name)
        W = orig[name + ".weight"]
        kw = {}
        if scheme == "NVFP4":
            # fused global scales: q/k/v share one, gate/up share one (AR_NVFP4_FUSED_LAYER_GLOBAL_SCALE)
            prefix, proj = name.rsplit(".", 1)
            group = {"q_proj": ("q_proj", "k_proj", "v_proj"), "k_proj": ("q_proj", "k_proj", "v_proj"),
                     "v_proj": ("q_proj", "k_proj", "v_proj"), "gate_proj": ("gate_proj", "up_proj"),
                     "up_proj": ("gate_proj", "up_proj")}.get(proj, (proj,))
            amax = max(float(orig[f"{prefix}.{p}.weight"].float().abs().max()) for p in group)
            assert torch.equal(t["weight_global_scale"], fpquant.nvfp4_global_scale(torch.tensor(amax))), name
            kw["global_scale"] = t["weight_global_scale"]
        fw = fpquant.quantize_float(W, PRESETS[scheme], **kw)
        fw.input_scale, fw.input_global_scale = t.get("input_scale"), t.get("input_global_scale")
        mine = get_format(spec.format).pack(fw, spec)
        for k in t:
            assert torch.equal(_u8(mine[k]), _u8(t[k])), f"{name}.{k}: {int((_u8(mine[k]) != _u8(t[k])).sum())} bytes differ"
    record(scheme, rtn_bytes_equal=True)


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_decode_and_reencode_gives_the_same_bytes(fp_exports, scheme):
    layers = _layers(_tensors(fp_exports.get(scheme)))
    for name, t in layers.items():
        spec = _spec(scheme, t, name)
        fmt = get_format(spec.format)
        fw = fmt.unpack(t, spec)
        deq = fw.dequantize()
        # with the stored scales: every element code comes back, -0.0 included
        per_elem = fw.scales.repeat_interleave(fw.block_size, 1)[:, : spec.in_features]
        vals = deq * fw.global_scale if fw.global_scale is not None else deq
        assert torch.equal(fpcodes.encode_elements(vals / per_elem, fw.element), fw.codes), name
        # full re-quantization of the dequantized weight: same scales, same values
        again = fpquant.quantize_float(deq, spec.scheme, global_scale=fw.global_scale)
        assert torch.equal(_u8(again.raw_scales), _u8(fw.raw_scales)), name
        assert torch.equal(again.dequantize(), deq), name
        same = again.codes == fw.codes
        neg_zero = (fw.codes == 8) & (again.codes == 0) if fw.element in ("e2m1", "e0m4") else torch.zeros_like(same)
        assert bool((same | neg_zero).all()), name  # MX 4-bit: a stored -0 requantizes to +0
        again.input_scale, again.input_global_scale = fw.input_scale, fw.input_global_scale
        packed = fmt.pack(replace(again, codes=fw.codes), spec)
        for k in t:
            assert torch.equal(_u8(packed[k]), _u8(t[k])), f"{name}.{k}"


# ---- layers ----------------------------------------------------------------------------------------
def _autoround_module(scheme: str, t: dict[str, torch.Tensor], K: int, N: int, dtype: torch.dtype):
    """AutoRound's own inference module for one exported layer, fed the export's tensors."""
    from auto_round.experimental.qmodules.fp8_static import WeightFP8ActFP8StaticQuantLinear
    from auto_round.experimental.qmodules.mx import MXFP4QuantLinear, MXFP8QuantLinear, MXINT4QuantLinear
    from auto_round.experimental.qmodules.nvfp4 import NVFP4QuantLinear
    from auto_round.schemes import PRESET_SCHEMES

    conf = PRESET_SCHEMES[scheme]
    if scheme in ("MXFP4", "MXFP4_RCEIL", "MXINT4"):
        cls = MXINT4QuantLinear if scheme == "MXINT4" else MXFP4QuantLinear
        return cls(K, N, conf, weight=t["weight_packed"], weight_scale=t["weight_scale"], bias=None, dtype=dtype)
    if scheme == "MXFP8":
        return MXFP8QuantLinear(K, N, conf, weight=t["weight"], weight_scale=t["weight_scale"], bias=None, dtype=dtype)
    if scheme == "NVFP4":
        m = NVFP4QuantLinear(K, N, conf, weight=t["weight_packed"], weight_scale=t["weight_scale"], bias=None, dtype=dtype)
        m.load_state_dict(dict(t), strict=True)
        return m
    m = WeightFP8ActFP8StaticQuantLinear(K, N, weight=t["weight"], weight_scale=t["weight_scale"],
                                         input_scale=t.get("input_scale"), dtype=torch.bfloat16)
    if scheme == "FPW8A16":
        # AutoRound has no loader for it: its FP8 module's dequantization (weight.to(hp) * weight_scale),
        # no activation quantization, with hp = bf16 as that module does, or fp32 for an fp32 model
        hp = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
        w = t["weight"].to(hp) * t["weight_scale"].to(hp).unsqueeze(1)
        return lambda x: F.linear(x, w.to(x.dtype))
    return m


def _away_from_midpoints(x: torch.Tensor, scheme: str, w, n: int, delta: float = 1e-5) -> torch.Tensor:
    """``n`` rows of ``x`` whose activation quantization no rounding midpoint can flip.

    Random bf16 values often sit exactly on an E2M1/E4M3 midpoint (both are representable);
    such elements are moved one ulp towards zero until every element's code is the same for
    ``x * (1 - delta)``, ``x`` and ``x * (1 + delta)``; rows still unstable are dropped.
    """
    if scheme not in ACT_SCHEMES:
        return x[:n]

    def codes(v):
        if scheme == "FP8_STATIC":
            return fpquant.fp8_static_quantize_input(v, w.input_scale.float()).float()
        return fpquant.act_qdq(v, PRESETS[scheme], w)

    itype = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}[x.dtype]
    for _ in range(6):
        xf = x.float()
        base = codes(xf)
        unstable = (codes(xf * (1 + delta)) != base) | (codes(xf * (1 - delta)) != base)
        if not bool(unstable.any()):
            break
        nudge = unstable & (x != 0)
        x = torch.where(nudge, (x.view(itype) - 1).view(x.dtype), x)  # one ulp towards zero
    xf = x.float()
    base = codes(xf)
    ok = (codes(xf * (1 + delta)) == base).all(-1) & (codes(xf * (1 - delta)) == base).all(-1)
    rows = x[ok][:n]
    assert rows.shape[0] == n, f"only {rows.shape[0]} of {x.shape[0]} candidate rows are away from midpoints"
    return rows


#: allowed max|ours - AutoRound| / max|AutoRound| per layer, by compute dtype
LAYER_TOL = {torch.bfloat16: 1e-6, torch.float32: 1e-5}
#: FP8_STATIC in fp32: AutoRound's module rounds fp8 * scale to bf16 (weights and activations)
#: before its matmul, quantlinear does not: compare with that rounding's size, and with the exact value
FP8_STATIC_FP32_TOL, FP8_STATIC_FP32_EXACT_TOL = 1e-2, 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_every_layer_matches_autorounds_module(fp_exports, scheme, dtype):
    d = fp_exports.get(scheme)
    sd = _tensors(d)
    model = _load(d, dtype)
    rep = model.quantlinear_report
    assert len(rep.layers) == 7 and {s.kernel.name for s in rep.layers.values()} == {KERNEL[SCHEMES[scheme]]}
    worst, worst_random, worst_exact = 0.0, 0.0, 0.0
    g = torch.Generator().manual_seed(7)
    for name, t in _layers(sd).items():
        ours = model.get_submodule(name)
        K, N = ours.in_features, ours.out_features
        ref = _autoround_module(scheme, t, K, N, dtype)
        fw = get_format(SCHEMES[scheme]).unpack(t, _spec(scheme, t, name, dtype))
        x = (torch.randn(64, K, generator=g) * torch.logspace(-1, 0.7, K)).to(dtype)
        xs = _away_from_midpoints(x, scheme, fw, 16)
        with torch.no_grad():
            y, r = ours(xs), ref(xs)
            worst = max(worst, rel(y, r))
            worst_random = max(worst_random, rel(ours(x), ref(x)))
            if scheme == "FP8_STATIC":  # the exact value of the format: fp8 codes times both scales
                x8 = fpquant.fp8_static_quantize_input(xs, t["input_scale"]).double() * t["input_scale"].double()
                assert torch.equal(fpquant.fp8_static_qdq(xs, t["input_scale"]), ref.qdq_input(xs).to(dtype))
                worst_exact = max(worst_exact, rel(y, x8 @ fw.dequantize().double().t()))
            elif scheme in ACT_SCHEMES:
                assert torch.equal(fpquant.act_qdq(xs, PRESETS[scheme], fw), ref.qdq_input(xs)), name
    tag = "bf16" if dtype == torch.bfloat16 else "fp32"
    record(scheme, **{f"layer_{tag}": worst, f"layer_{tag}_random_inputs": worst_random})
    if scheme == "FP8_STATIC":
        record(scheme, **{f"layer_{tag}_vs_exact": worst_exact})
    if scheme == "FP8_STATIC" and dtype == torch.float32:
        assert worst <= FP8_STATIC_FP32_TOL and worst_exact <= FP8_STATIC_FP32_EXACT_TOL, (worst, worst_exact)
    else:
        assert worst <= LAYER_TOL[dtype], worst


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_fp8_static_scaled_mm_kernel_is_exact(fp_exports, dtype):
    """``cpu.fp8_scaled_mm`` (FP8 x FP8 through torch._scaled_mm): the exact value, one rounding to the dtype."""
    if not hasattr(torch, "_scaled_mm"):
        pytest.skip("torch has no _scaled_mm")
    from transformers import AutoConfig, AutoModelForCausalLM

    d = fp_exports.get("FP8_STATIC")
    with quantlinear.skeleton():
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(d)), dtype=dtype)
    m = quantlinear.load_quantized(m, d, backend="cpu.fp8_scaled_mm", device="cpu", dtype=dtype)
    assert {s.kernel.name for s in m.quantlinear_report.layers.values()} == {"cpu.fp8_scaled_mm"}
    worst_ar, worst_exact = 0.0, 0.0
    g = torch.Generator().manual_seed(8)
    for name, t in _layers(_tensors(d)).items():
        ours = m.get_submodule(name)
        fw = get_format("fp8").unpack(t, _spec("FP8_STATIC", t, name, dtype))
        ref = _autoround_module("FP8_STATIC", t, ours.in_features, ours.out_features, dtype)
        xs = _away_from_midpoints((torch.randn(64, ours.in_features, generator=g) * 2).to(dtype), "FP8_STATIC", fw, 16)
        with torch.no_grad():
            y = ours(xs)
            x8 = fpquant.fp8_static_quantize_input(xs, t["input_scale"]).double() * t["input_scale"].double()
            worst_exact = max(worst_exact, rel(y, x8 @ fw.dequantize().double().t()))
            worst_ar = max(worst_ar, rel(y, ref(xs)))
    tag = "bf16" if dtype == torch.bfloat16 else "fp32"
    record("FP8_STATIC", **{f"scaled_mm_layer_{tag}": worst_ar, f"scaled_mm_layer_{tag}_vs_exact": worst_exact})
    # bf16: one rounding of the output (2**-8) against AutoRound's three bf16 roundings
    assert worst_exact <= (4e-3 if dtype == torch.bfloat16 else 1e-5), worst_exact
    assert worst_ar <= 1.5e-2, worst_ar


def test_fpw8a16_matches_autorounds_fake_quantization(fp_exports):
    """FPW8A16 against AutoRound's own quantize-dequantize of the original weights (quant_fp8_sym, per tensor)."""
    from auto_round.data_type.fp8 import quant_fp8_sym

    d = fp_exports.get("FPW8A16")
    model = _load(d, torch.float32)
    worst, worst_scale = 0.0, 0.0
    sd = _tensors(d)
    for name, t in _layers(sd).items():
        W = fp_exports.original[name + ".weight"].float()
        qdq, scale, _ = quant_fp8_sym(W, group_size=0)
        x = torch.randn(8, W.shape[1], generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            worst = max(worst, rel(model.get_submodule(name)(x), F.linear(x, qdq)))
        worst_scale = max(worst_scale, abs(float(t["weight_scale"].float() / scale.reshape(())) - 1))
    record("FPW8A16", layer_fp32_vs_autoround_fakequant=worst, stored_scale_rounding=worst_scale)
    # the export stores the fp32 scale rounded to bf16 (<= 2**-8 relative); AutoRound's in-memory
    # fake quantization uses the fp32 scale: that rounding is the whole difference
    assert worst_scale <= 2.0**-8 and worst <= worst_scale * 1.01 + 1e-6, (worst, worst_scale)


# ---- whole model -----------------------------------------------------------------------------------
def _autoround_model(d: Path, scheme: str, fp_exports):
    from transformers import AutoModelForCausalLM

    if scheme == "FPW8A16":  # AutoRound's loader refuses group_size 0: its FP8 dequantization in a float model
        m = _build_model()
        sd = _tensors(d)
        for name, t in _layers(sd).items():
            m.get_submodule(name).weight.data = (t["weight"].to(torch.bfloat16) * t["weight_scale"].unsqueeze(1))
        return m
    m, info = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.bfloat16, device_map="cpu", output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"AutoRound's loader did not load the export cleanly: {bad}"
    kinds = {type(mod).__name__ for n, mod in m.named_modules() if n.endswith("_proj")}
    assert kinds and all("QuantLinear" in k for k in kinds), kinds
    return m.eval()


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_model_logits_match_autorounds_loader(fp_exports, scheme):
    d = fp_exports.get(scheme)
    ours = _load(d, torch.bfloat16)
    ref = _autoround_model(d, scheme, fp_exports)
    # transformers keeps rotary tables in fp32 under from_pretrained; a bf16 skeleton rounds them
    for n, b in ref.named_buffers():
        if "rotary_emb" in n:
            ours.get_submodule(n.rsplit(".", 1)[0])._buffers[n.rsplit(".", 1)[1]] = b.clone()
    with torch.no_grad():
        a, b = ours(IDS).logits, ref(IDS).logits
    err = rel(a, b)
    record(scheme, model_logits_bf16=err)
    # bf16 layers are bit-identical to AutoRound's modules, so are the logits
    assert err <= 1e-6, err
