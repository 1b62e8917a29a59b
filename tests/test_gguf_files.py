"""GGUF support without AutoRound: dequantization, formats, reading files, loading models, bad files.

Files are written with llama.cpp's own ``gguf.GGUFWriter`` (``ql_gguf.write_gguf``: llama.cpp's tensor
names and Q/K permutation), and their meaning is read back with llama.cpp's reader and dequantizer
(``ql_gguf.reference_state_dict``), sharing no code with quantlinear's GGUF modules.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

import quantlinear  # noqa: E402
from quantlinear import CheckpointError, QuantLinearError, UnsupportedSchemeError  # noqa: E402
from quantlinear.formats import GGUF_FORMATS, GGUFWeights, get_format  # noqa: E402
from quantlinear.formats.gguf import gguf_scheme  # noqa: E402
from quantlinear.gguf_quants import SCALE_FIELDS, dequantize_rows  # noqa: E402
from quantlinear.gguf_types import GGUF_TYPES  # noqa: E402
from quantlinear.testing_gguf import random_gguf_weights  # noqa: E402

import ql_gguf  # noqa: E402

TYPES = list(GGUF_TYPES)
LEGACY = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]  # the types gguf-py can quantize


def _bits_equal(a: np.ndarray, b: torch.Tensor) -> bool:
    return a.dtype == np.float32 and np.array_equal(a.view(np.int32), b.numpy().view(np.int32))


# ---- dequantization: bit-identical to llama.cpp's reference ------------------------------------------
@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_is_bit_identical_on_random_blocks(qtype):
    """Random bytes exercise every bit of every field; only the fp16 scales are kept finite."""
    w = random_gguf_weights(qtype, 9, 2 * GGUF_TYPES[qtype].block, seed=1)
    ref = gguf.quants.dequantize(w.data.numpy(), gguf.GGMLQuantizationType[qtype])
    assert _bits_equal(ref, dequantize_rows(qtype, w.data))


@pytest.mark.parametrize("qtype", LEGACY)
def test_dequantize_is_bit_identical_on_quantized_weights(qtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 128, generator=g) * 0.05
    x[0] = 0.0  # all-zero blocks: d = 0
    x[1] = 0.25  # constant blocks: min == max
    x[2, ::9] *= 40  # outliers
    data = gguf.quants.quantize(x.numpy(), gguf.GGMLQuantizationType[qtype])
    ref = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[qtype])
    got = dequantize_rows(qtype, torch.from_numpy(data))
    assert _bits_equal(ref, got)
    assert float((got - x).abs().max()) < 0.2 * float(x.abs().max())  # and it is the weight, quantized


def test_dequantize_keeps_leading_dims_and_refuses_bad_input():
    w = random_gguf_weights("Q6_K", 6, 512, seed=2).data
    assert torch.equal(dequantize_rows("Q6_K", w.reshape(2, 3, -1)), dequantize_rows("Q6_K", w).reshape(2, 3, 512))
    with pytest.raises(CheckpointError, match=r"Q6_K rows of 419 bytes are not a whole number of 210-byte blocks"):
        dequantize_rows("Q6_K", w[:, :419])
    with pytest.raises(CheckpointError, match="must be uint8"):
        dequantize_rows("Q6_K", w.to(torch.int16))
    with pytest.raises(UnsupportedSchemeError, match="'IQ4_NL' is not supported"):
        dequantize_rows("IQ4_NL", w)


@pytest.mark.parametrize("qtype", TYPES)
def test_scale_fields_are_the_blocks_scales(qtype):
    """A NaN written at a SCALE_FIELDS offset turns llama.cpp's whole block into NaN (so the offset
    is that block's d / m / dmin), and the format refuses the layer, naming row, block and field."""
    t = GGUF_TYPES[qtype]
    for field, off in SCALE_FIELDS[qtype]:
        w = random_gguf_weights(qtype, 3, 3 * t.block, seed=4).data.clone()
        w[1, t.type_size + off : t.type_size + off + 2] = torch.tensor([0x00, 0x7E], dtype=torch.uint8)  # fp16 NaN
        ref = gguf.quants.dequantize(w.numpy(), gguf.GGMLQuantizationType[qtype]).reshape(3, 3, t.block)
        assert np.isnan(ref[1, 1]).all() and np.isfinite(np.delete(ref.reshape(9, -1), 4, axis=0)).all()
        fmt = GGUF_FORMATS[t.format]
        spec = quantlinear.LayerSpec(gguf_scheme(qtype), t.format, 3 * t.block, 3, False, torch.float32, "cpu", False, "m.l")
        with pytest.raises(CheckpointError, match=rf"layer 'm.l': tensor m.l.weight: {qtype} block 1 \(row 1, input channels from {t.block}\) has {field} = nan"):
            fmt.unpack({"weight": w}, spec)


# ---- the packing formats --------------------------------------------------------------------------------
def test_ten_formats_ten_schemes():
    assert sorted(GGUF_FORMATS) == sorted(f"gguf_{q.lower()}" for q in TYPES)
    assert len({gguf_scheme(q) for q in TYPES}) == 10
    assert gguf_scheme("Q4_K") == quantlinear.Scheme(bits=4, group_size=256, sym=False, data_type="gguf")
    for name, fmt in GGUF_FORMATS.items():
        assert get_format(name) is fmt


@pytest.mark.parametrize("qtype", ["Q4_0", "Q3_K"])
def test_format_round_trip_and_errors(qtype):
    t = GGUF_TYPES[qtype]
    fmt = GGUF_FORMATS[t.format]
    K, N = 2 * t.block, 5
    spec = quantlinear.LayerSpec(gguf_scheme(qtype), t.format, K, N, True, torch.float32, "cpu", False, "blk.q")
    w = random_gguf_weights(qtype, N, K, seed=5)
    tensors = fmt.pack(w, spec) | {"bias": torch.zeros(N)}
    fmt.validate(tensors, spec)
    assert torch.equal(fmt.unpack(tensors, spec).data, w.data)
    assert fmt.infer_features({"weight": tuple(w.data.shape)}, t.bits) == (K, N)
    with pytest.raises(CheckpointError, match=rf"tensor blk.q.weight has rows of {2 * t.type_size - 1} bytes, not a whole number of {qtype} blocks"):
        fmt.validate({"weight": w.data[:, :-1], "bias": torch.zeros(N)}, spec)
    with pytest.raises(CheckpointError, match=r"tensor blk.q.weight has shape \(4, "):
        fmt.validate({"weight": w.data[:4], "bias": torch.zeros(N)}, spec)
    odd = quantlinear.LayerSpec(gguf_scheme(qtype), t.format, K + 16, N, False, torch.float32, "cpu", False, "x")
    assert f"in_features={K + 16} is not a multiple of the {qtype} block of {t.block}" in fmt.check_shape(odd)
    other = quantlinear.LayerSpec(gguf_scheme("Q8_0"), t.format, K, N, False, torch.float32, "cpu", False, "x")
    assert "not gguf8_g32_sym" in fmt.check_shape(other)
    with pytest.raises(QuantLinearError, match=f"stores {qtype} blocks, got Q8_0"):
        fmt.pack(GGUFWeights("Q8_0", w.data), spec)


# ---- whole models from files written by llama.cpp's writer -------------------------------------------------
pytest.importorskip("transformers")


def _mixed(name: str, shape) -> str:
    """A q4_k_m-like mix: F32 norms, Q6_K for ffn_down/attn_v/output, Q4_K elsewhere, Q8_0 embedding."""
    if len(shape) == 1:
        return "F32"
    if name.startswith("token_embd"):
        return "Q8_0"
    if "ffn_down" in name or "attn_v" in name or name.startswith("output"):
        return "Q6_K"
    return "Q4_K" if name.endswith("weight") else "F32"


def _load(path, config, dtype=torch.float32, **kw):
    return quantlinear.load_quantized(ql_gguf.skeleton(config, dtype), path, device="cpu", dtype=dtype, **kw)


@pytest.mark.parametrize("arch,kw", [("llama", {}), ("llama", {"bias": True}), ("qwen2", {"tie": True}), ("qwen3", {})])
def test_model_loads_as_llama_cpp_means_it(tmp_path, arch, kw):
    model = ql_gguf.tiny_model(arch, **kw)
    path = ql_gguf.write_gguf(tmp_path / "m.gguf", model, arch, _mixed, drop=("output.weight",) if kw.get("tie") else ())
    ref = ql_gguf.reference_model(path, arch, model.config)
    got = _load(path, model.config)
    rep = got.quantlinear_report
    types = ql_gguf.file_types(path)
    gnames = ql_gguf.gguf_names(ref, arch)
    for name, sel in rep.layers.items():
        g = gnames[name + ".weight"]
        g = g if g in types else "token_embd.weight"  # tied: lm_head is token_embd
        assert sel.spec.format == "gguf_" + types[g].lower() and sel.kernel.name == "cpu.gguf", name
        layer = got.get_submodule(name)
        refmod = ref.get_submodule(name)
        assert torch.equal(ql_gguf.applied_to_eye(layer, layer.in_features), ql_gguf.expected_on_eye(refmod.weight, refmod.bias)), name
    assert rep.quantized_embeddings == {"model.embed_tokens": "Q8_0"}
    ids = torch.arange(ql_gguf.VOCAB)
    assert torch.equal(got.model.embed_tokens(ids), ref.model.embed_tokens(ids))
    assert ql_gguf.rel(ql_gguf.logits(got), ql_gguf.logits(ref)) < 1e-5
    assert len(rep.layers) == 7 * model.config.num_hidden_layers + 1  # + lm_head
    if kw.get("tie"):  # no output.weight: lm_head reads token_embd, one tensor for both modules
        assert got.lm_head.blocks.data_ptr() == got.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_float_file_gives_back_the_model_exactly(tmp_path, arch):
    """All tensors F32: the load must return the original weights bit for bit, which pins the name
    map and, for llama, the inverse of the converter's Q/K permutation (a wrong inverse is not exact)."""
    model = ql_gguf.tiny_model(arch, kv_heads=2)
    path = ql_gguf.write_gguf(tmp_path / "f.gguf", model, arch, lambda n, s: "F32")
    if arch == "llama":
        raw = gguf.GGUFReader(str(path))
        q = next(t for t in raw.tensors if t.name == "blk.0.attn_q.weight").data
        assert not np.array_equal(q, model.model.layers[0].self_attn.q_proj.weight.detach().numpy())  # the file is permuted
    got = _load(path, model.config)
    assert not got.quantlinear_report.layers
    want = model.state_dict()
    for k, v in got.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert ql_gguf.rel(ql_gguf.logits(got), ql_gguf.logits(model)) == 0.0


def test_f16_tensors_and_bf16_compute(tmp_path):
    model = ql_gguf.tiny_model("llama", layers=1)
    path = ql_gguf.write_gguf(tmp_path / "h.gguf", model, "llama", lambda n, s: "F16" if "attn" in n else _mixed(n, s))
    ref = ql_gguf.reference_model(path, "llama", model.config)
    got = _load(path, model.config, dtype=torch.bfloat16)
    assert "model.layers.0.self_attn.q_proj" in got.quantlinear_report.float_layers
    assert torch.equal(got.model.layers[0].self_attn.k_proj.weight, ref.model.layers[0].self_attn.k_proj.weight.to(torch.bfloat16))
    assert got.model.embed_tokens(torch.tensor([3])).dtype == torch.bfloat16
    assert ql_gguf.rel(ql_gguf.logits(got), ql_gguf.logits(ref)) < 5e-2


def test_folder_with_one_gguf_and_inspect(tmp_path, capsys):
    from quantlinear.cli import main

    model = ql_gguf.tiny_model("qwen3", layers=1)
    ql_gguf.write_gguf(tmp_path / "only.gguf", model, "qwen3", _mixed)
    got = _load(tmp_path, model.config)
    assert got.quantlinear_report.kernel_counts() == {"cpu.gguf": 8}
    assert main(["inspect", str(tmp_path / "only.gguf"), "--json", "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["quant_method"] == "gguf" and info["config"]["architecture"] == "qwen3"
    assert info["config"]["gguf_types"] == {"Q4_K": 5, "Q6_K": 3}
    by = {layer["layer"]: layer for layer in info["layers"]}
    assert by["model.layers.0.mlp.down_proj"]["scheme"] == gguf_scheme("Q6_K").id
    assert by["model.layers.0.mlp.down_proj"]["in_features"] == 512 and by["lm_head"]["out_features"] == ql_gguf.VOCAB
    assert {layer["kernel"] for layer in info["layers"]} == {"cpu.gguf"}
    assert info["quantized_embeddings"] == {"model.embed_tokens": "Q8_0"}
    assert main(["inspect", str(tmp_path / "only.gguf"), "--device", "cpu"]) == 0
    assert "gguf" in capsys.readouterr().out


# ---- bad files ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """One small valid file (llama, 1 layer) and its model config."""
    model = ql_gguf.tiny_model("llama", layers=1)
    path = ql_gguf.write_gguf(tmp_path_factory.mktemp("good") / "good.gguf", model, "llama", _mixed)
    return path, model.config


def _copy(good, tmp_path, name="bad.gguf"):
    dst = tmp_path / name
    dst.write_bytes(good[0].read_bytes())
    return dst


def _tensor_entry(raw: bytes, name: str) -> int:
    """Offset of the n_dims field of a tensor's entry in the header (after its name)."""
    key = struct.pack("<Q", len(name)) + name.encode()
    i = raw.index(key)
    return i + len(key)


def _patch_type(path, name: str, ggml_type: int) -> None:
    raw = bytearray(path.read_bytes())
    p = _tensor_entry(bytes(raw), name)
    n_dims = struct.unpack_from("<I", raw, p)[0]
    struct.pack_into("<I", raw, p + 4 + 8 * n_dims, ggml_type)
    path.write_bytes(bytes(raw))


def test_truncated_file(good, tmp_path):
    bad = _copy(good, tmp_path)
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(CheckpointError, match=r"bad\.gguf: truncated GGUF file: tensor '[\w.]+' \(\w+ \[.*\]\) needs bytes"):
        _load(bad, good[1])
    bad.write_bytes(raw[:300])  # inside the header
    with pytest.raises(CheckpointError, match=r"bad\.gguf: (not a readable GGUF file|truncated)"):
        _load(bad, good[1])


@pytest.mark.parametrize("content,match", [(b"", r"not a GGUF file \(starts with b''"),
                                           (b"PK\x03\x04 zip", r"not a GGUF file \(starts with b'PK\\x03\\x04', expected b'GGUF'\)"),
                                           (b"GGUF", "truncated or corrupt GGUF header")])
def test_not_gguf(tmp_path, good, content, match):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        _load(bad, good[1])


def test_unknown_and_unsupported_types(good, tmp_path):
    bad = _copy(good, tmp_path)
    _patch_type(bad, "blk.0.ffn_up.weight", 99)
    with pytest.raises(CheckpointError, match=r"bad\.gguf: tensor 'blk.0.ffn_up.weight' has unknown ggml type 99"):
        _load(bad, good[1])
    bad = _copy(good, tmp_path, "iq.gguf")
    _patch_type(bad, "blk.0.ffn_up.weight", int(gguf.GGMLQuantizationType.IQ4_NL))  # same 32-block family, real type
    with pytest.raises(CheckpointError, match=r"tensor 'blk.0.ffn_up.weight' has type IQ4_NL, which quantlinear does not load"):
        _load(bad, good[1])


def test_rows_not_whole_blocks(good, tmp_path):
    bad = _copy(good, tmp_path)
    raw = bytearray(bad.read_bytes())
    p = _tensor_entry(bytes(raw), "blk.0.attn_q.weight")
    struct.pack_into("<Q", raw, p + 4, 250)  # ne0 (= in_features) 256 -> 250
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"tensor 'blk.0.attn_q.weight' \(Q4_K\) has rows of 250 elements, not a multiple of the Q4_K block of 256"):
        _load(bad, good[1])


def test_tensor_of_the_wrong_size(tmp_path, good):
    small = ql_gguf.tiny_model("llama", layers=1, intermediate=256)
    path = ql_gguf.write_gguf(tmp_path / "small.gguf", small, "llama", _mixed)
    with pytest.raises(CheckpointError, match=r"layer 'model.layers.0.mlp.(gate|up|down)_proj': tensor model.layers.0.mlp.\w+.weight has shape"):
        _load(path, good[1])


def test_nan_block_scale_in_a_file(good, tmp_path):
    bad = _copy(good, tmp_path)
    r = gguf.GGUFReader(str(bad))
    t = next(t for t in r.tensors if t.name == "blk.0.ffn_down.weight")
    assert t.tensor_type.name == "Q6_K" and tuple(t.data.shape) == (256, 420)  # 2 blocks of 210 bytes per row
    raw = bytearray(bad.read_bytes())
    at = t.data_offset + 3 * 420 + 210 + 208  # row 3, block 1: its d
    raw[at : at + 2] = b"\x00\x7c"  # fp16 +inf
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"layer 'model.layers.0.mlp.down_proj': tensor model.layers.0.mlp.down_proj.weight: Q6_K block 1 \(row 3, input channels from 256\) has d = inf"):
        _load(bad, good[1])


def test_unsupported_architecture_and_head_mismatch(tmp_path, good):
    model = ql_gguf.tiny_model("llama", layers=1)
    path = ql_gguf.write_gguf(tmp_path / "m.gguf", model, "llama", _mixed)
    raw = path.read_bytes().replace(b"llama", b"gpt2x")  # the architecture and its metadata keys
    (tmp_path / "g.gguf").write_bytes(raw)
    with pytest.raises(CheckpointError, match=r"g\.gguf: GGUF architecture 'gpt2x' is not supported \(supported: llama, qwen2, qwen3\)"):
        _load(tmp_path / "g.gguf", good[1])
    other = ql_gguf.tiny_config("llama", layers=1, kv_heads=4)
    with pytest.raises(CheckpointError, match=r"llama.attention.head_count_kv = 2 but the model's config has num_key_value_heads = 4"):
        _load(path, other)


def test_unknown_tensor_names_strict_and_not(tmp_path):
    model = ql_gguf.tiny_model("llama", layers=1)
    quantized = {"blk.0.mystery.weight": ("Q8_0", random_gguf_weights("Q8_0", 4, 64).data.numpy())}
    path = ql_gguf.write_gguf(tmp_path / "q.gguf", model, "llama", _mixed, extra=quantized)
    with pytest.raises(CheckpointError, match=r"checkpoint tensor blk.0.mystery.weight maps to no module of the model"):
        _load(path, model.config, strict=False)  # a quantized layer without a module is never ignored
    path = ql_gguf.write_gguf(tmp_path / "f.gguf", model, "llama", _mixed, extra={"blk.0.extra_norm.weight": ("F32", np.ones(8, np.float32))})
    with pytest.raises(CheckpointError, match=r"checkpoint tensor 'blk.0.extra_norm.weight' maps to no module"):
        _load(path, model.config)
    got = _load(path, model.config, strict=False)
    assert any("blk.0.extra_norm.weight" in w for w in got.quantlinear_report.warnings)


def test_folder_rules_and_key_mapping(tmp_path, good):
    (tmp_path / "a.gguf").write_bytes(good[0].read_bytes())
    (tmp_path / "b.gguf").write_bytes(good[0].read_bytes())
    with pytest.raises(CheckpointError, match=r"holds 2 \.gguf files \(a\.gguf, b\.gguf\); pass the file to load"):
        _load(tmp_path, good[1])
    with pytest.raises(QuantLinearError, match="key_mapping does not apply to a GGUF file"):
        _load(tmp_path / "a.gguf", good[1], key_mapping={"a": "b"})


def test_from_pretrained_with_a_gguf_file(tmp_path):
    """The model's config folder + a .gguf (AutoRound writes no config beside it): one call."""
    model = ql_gguf.tiny_model("qwen2", layers=1, tie=True)
    model.config.save_pretrained(tmp_path)
    path = ql_gguf.write_gguf(tmp_path / "m.gguf", model, "qwen2", _mixed, drop=("output.weight",))
    want = ql_gguf.logits(_load(path, model.config))
    got = quantlinear.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32, device="cpu")
    assert torch.equal(ql_gguf.logits(got), want)
    assert got.quantlinear_report.kernel_counts() == {"cpu.gguf": 8}
    auto = quantlinear.from_pretrained(tmp_path, dtype=torch.float32, device="cpu")  # the folder's only .gguf
    assert torch.equal(ql_gguf.logits(auto), want)
    with pytest.raises(CheckpointError, match=r"gguf_file='nope.gguf': .*nope.gguf does not exist"):
        quantlinear.from_pretrained(tmp_path, gguf_file="nope.gguf")
    with pytest.raises(QuantLinearError, match="quantization_config does not apply"):
        quantlinear.from_pretrained(tmp_path, gguf_file=str(path), quantization_config={"bits": 4})
