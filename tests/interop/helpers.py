"""Machinery of the interop suite: tiny models, real AutoRound exports, three references.

For every variant of :data:`VARIANTS` the real ``auto_round`` package quantizes a tiny random
model (RTN: ``iters=0, disable_opt_rtn=True``, the model-object flow of
``/work/shared/notes/autoround-exports.md``) and writes a checkpoint.  That checkpoint is then
read four ways:

* **quantlinear**: ``load_quantized`` into a skeleton built from the export's ``config.json``;
* **AutoRound's loader**: transformers ``from_pretrained``, which hands the model to
  AutoRound's inference backends (ARK on CPU, or its torch kernels); its loading info is
  checked before it is trusted;
* **exact**: our own fp32 dequantization of the raw safetensors, written from AutoRound's
  *pack* code (``auto_round_extension/torch/qlinear_torch*.py`` ``pack_*``,
  ``auto_round/export/export_to_awq/utils.py`` ``WQLinear_GEMM.from_linear``) with numpy and
  no quantlinear code;
* **AutoRound's unpack code**: AutoRound's pure-torch QuantLinear layers / AWQ
  ``dequantize_gemm`` fed the raw tensors (scales in fp32), for per-layer weights.

Nothing here imports ``auto_round`` at module level: the test modules ``importorskip`` it.
Measured errors go to :data:`RESULTS` (printed at the end of the session by ``conftest.py``
and written as JSON to ``$QUANTLINEAR_INTEROP_REPORT``).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import quantlinear
from quantlinear.formats import get_format

#: Measured figures, by variant id (or "roundtrip:<id>"), then by metric name.
RESULTS: dict[str, dict[str, Any]] = {}

#: Relative-error tolerance against AutoRound's own loader (the brief's 2e-2).
TOL_VS_AUTOROUND = 2e-2
#: quantlinear (fp32 compute) against the exact fp32 reference.
TOL_VS_EXACT = 1e-4
#: A quantized layer must matter this much to the logits, or comparing logits proves little.
MIN_LAYER_SENSITIVITY = 0.1

VOCAB = 256
SEED = 0
INPUT_IDS = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1234))


def record(key: str, **metrics: Any) -> None:
    RESULTS.setdefault(key, {}).update(metrics)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref| (the brief's measure), in float64."""
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


# ---- variants ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One real AutoRound export and what AutoRound is expected to write for it."""

    id: str
    bits: int
    group_size: int
    sym: bool
    format: str  # the ``format=`` passed to quantize_and_save
    quant_method: str  # expected in the export's quantization_config
    packing_format: str | None  # expected packing_format (None: the key is absent)
    arch: str = "llama"
    layer_config: dict | None = None
    max_shard_size: str | None = None
    #: layers the export must keep in float (besides lm_head)
    float_layers: tuple[str, ...] = ()
    #: environment AutoRound needs for this export
    env: tuple[tuple[str, str], ...] = ()
    #: whether AutoRound's own loader can run it on CPU (else: compared with the exact reference only)
    autoround_loads: bool = True
    #: make the first rows of every q_proj non-negative, so asym groups get zero point 0
    nonneg_rows: int = 0
    note: str = ""

    @property
    def preset(self) -> str:
        return f"W{self.bits}A16"


VARIANTS: dict[str, Variant] = {
    v.id: v
    for v in [
        # format="auto_round": sym -> auto_round:auto_gptq (zeros - 1), whatever the bits
        Variant("ar_w4g128_sym", 4, 128, True, "auto_round", "auto-round", "auto_round:auto_gptq"),
        Variant("ar_w2g32_sym", 2, 32, True, "auto_round", "auto-round", "auto_round:auto_gptq"),
        Variant("ar_w3gch_sym", 3, -1, True, "auto_round", "auto-round", "auto_round:auto_gptq",
                note="ARK has no 3-bit kernel: AutoRound's torch_zp backend, model forced to fp16"),
        Variant("ar_w8gch_sym", 8, -1, True, "auto_round", "auto-round", "auto_round:auto_gptq"),
        # format="auto_round", asym: 4-bit -> auto_round:auto_awq, other bits -> native auto_round
        Variant("ar_w4g128_asym", 4, 128, False, "auto_round", "auto-round", "auto_round:auto_awq"),
        Variant("ar_w2g64_asym", 2, 64, False, "auto_round", "auto-round", "auto_round"),
        Variant("ar_w3g32_asym", 3, 32, False, "auto_round", "auto-round", "auto_round",
                note="torch backend (fp16)"),
        # AutoRound 0.16.1 refuses 8-bit asym for these formats ("vLLM serves W8 GPTQ-format
        # weights symmetric-only") unless AR_ALLOW_W8_ASYM=1 (auto_round/schemes.py).
        Variant("ar_w8g32_asym", 8, 32, False, "auto_round", "auto-round", "auto_round",
                env=(("AR_ALLOW_W8_ASYM", "1"),), note="needs AR_ALLOW_W8_ASYM=1"),
        # explicit GPTQ packing with real (asymmetric) zero points
        # (with groups whose zero point is 0: stored as max(0 - 1, 0) = 0, read back as 1 by
        # AutoRound's loaders -- the file, not the quantizer, is the truth)
        Variant("argptq_w4g32_asym", 4, 32, False, "auto_round:auto_gptq", "auto-round", "auto_round:auto_gptq",
                nonneg_rows=8, note="some zero points are 0 (not representable as zero - 1)"),
        # AutoGPTQ and AutoAWQ exports (quant_method gptq / awq)
        Variant("gptq_w4g128_sym", 4, 128, True, "auto_gptq", "gptq", None, note="has g_idx"),
        Variant("gptq_w8gch_asym", 8, -1, False, "auto_gptq", "gptq", None,
                env=(("AR_ALLOW_W8_ASYM", "1"),), note="has g_idx; needs AR_ALLOW_W8_ASYM=1"),
        Variant("awq_w4g64_asym", 4, 64, False, "auto_awq", "awq", None),
        # the other config dialects of per-layer overrides: GPTQModel-style "dynamic"
        # ("+:regex" fields, "-:regex" skip) and AWQ "modules_to_not_convert"
        Variant("gptq_mixed_w4g128_sym", 4, 128, True, "auto_gptq", "gptq", None,
                layer_config={"mlp.down_proj": {"bits": 8}, "model.layers.1.self_attn.o_proj": {"bits": 16}},
                float_layers=("model.layers.1.self_attn.o_proj",), note="dynamic +:/-: overrides"),
        Variant("awq_mixed_w4g64_asym", 4, 64, False, "auto_awq", "awq", None,
                layer_config={"model.layers.1.self_attn.o_proj": {"bits": 16}},
                float_layers=("model.layers.1.self_attn.o_proj",), note="modules_to_not_convert"),
        # sharded, Qwen2 (q/k/v bias, tied embeddings), auto_round -> auto_awq
        Variant("qwen2_shard_w4g64_asym", 4, 64, False, "auto_round", "auto-round", "auto_round:auto_awq",
                arch="qwen2", max_shard_size="40KB", note="5 shards, bias, tied lm_head"),
        # a group size that does not divide in_features (Qwen2 down_proj: K=192, g=128): AutoRound
        # exports it (last group partial) but its loader has no CPU backend for such layers
        # (ARK and the torch kernels need K % group_size == 0): they are left MISSING.
        Variant("qwen2_partial_w4g128_sym", 4, 128, True, "auto_round", "auto-round", "auto_round:auto_gptq",
                arch="qwen2", autoround_loads=False, note="partial last group; AutoRound cannot load it"),
        # per-layer overrides.  Note: an 8-bit override that would inherit a global asym is
        # pinned to sym by AutoRound (layer_config_resolver.py), so mixed_w4g128_asym's
        # down_proj is written {"bits": 8, "sym": true}.
        Variant("mixed_w4g128_sym", 4, 128, True, "auto_round", "auto-round", "auto_round:auto_gptq",
                layer_config={"mlp.down_proj": {"bits": 8}, "model.layers.1.self_attn.o_proj": {"bits": 16}},
                float_layers=("model.layers.1.self_attn.o_proj",), note="down_proj 8-bit, one layer bf16"),
        Variant("mixed_w4g128_asym", 4, 128, False, "auto_round", "auto-round", "auto_round",
                layer_config={"mlp.down_proj": {"bits": 8}}, note="mixed bits -> native packing"),
    ]
}


# ---- tiny models and tokenizer -------------------------------------------------------------------
def model_config(arch: str):
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=VOCAB, max_position_embeddings=64,
        # 0.1 (not the default 0.02): with 0.02 zeroing a k_proj moves the logits by <2%,
        # less than the comparison tolerance; see MIN_LAYER_SENSITIVITY.
        initializer_range=0.1,
    )
    if arch == "llama":
        return LlamaConfig(intermediate_size=256, tie_word_embeddings=False, **common)
    if arch == "qwen2":
        return Qwen2Config(intermediate_size=192, tie_word_embeddings=True, **common)
    raise ValueError(arch)


def build_model(arch: str, seed: int = SEED, nonneg_rows: int = 0) -> nn.Module:
    """The same random float model every time for (arch, seed, nonneg_rows)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(model_config(arch), dtype=torch.float32).eval()
    if nonneg_rows:
        with torch.no_grad():
            for name, mod in m.named_modules():
                if name.endswith("q_proj"):
                    mod.weight[:nonneg_rows].abs_()
    return m


def original_model(v: Variant) -> nn.Module:
    """The float model AutoRound quantized for ``v``."""
    return build_model(v.arch, nonneg_rows=v.nonneg_rows)


@functools.lru_cache(maxsize=None)
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    vocab["[UNK]"] = 0
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[UNK]", eos_token="[UNK]", bos_token="[UNK]")


# ---- AutoRound export ----------------------------------------------------------------------------
def export_with_autoround(v: Variant, out: Path) -> Path:
    """Quantize ``v``'s model with the real AutoRound (RTN) and return the export directory."""
    from auto_round import AutoRound

    model = original_model(v)
    kw: dict[str, Any] = dict(scheme=v.preset, iters=0, disable_opt_rtn=True, device_map="cpu",
                              group_size=v.group_size, sym=v.sym)
    if v.layer_config:
        kw["layer_config"] = copy.deepcopy(v.layer_config)
    save_kw = {"max_shard_size": v.max_shard_size} if v.max_shard_size else {}
    saved_env = {k: os.environ.get(k) for k, _ in v.env}
    os.environ.update(dict(v.env))
    try:
        ar = AutoRound(model, tokenizer(), **kw)
        ar.quantize_and_save(str(out), format=v.format, **save_kw)
    finally:
        for k, old in saved_env.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old
    # quantize_and_save writes into a derived subfolder (e.g. out/w4g128)
    found = sorted(p.parent for p in out.rglob("config.json"))
    if len(found) != 1:
        raise AssertionError(f"expected one export under {out}, found {found}")
    return found[0]


# ---- raw checkpoint access (independent of quantlinear) -----------------------------------------
def read_tensors(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def read_config(d: Path) -> dict[str, Any]:
    return json.loads((Path(d) / "config.json").read_text())


def quantized_layer_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight"))


def layout_of(qcfg: dict[str, Any]) -> tuple[str, int]:
    """(layout, zero offset) of a checkpoint, from AutoRound's export code.

    ``auto_round:auto_gptq`` and AutoGPTQ store ``zero - 1`` (``qlinear_torch_zp.pack``:
    ``zeros = (zeros - 1).clamp_(0, maxq)``); the native ``auto_round`` packing stores raw
    zeros (``qlinear_torch.pack``); AWQ stores raw zeros along N (``WQLinear_GEMM``).
    """
    method = str(qcfg.get("quant_method")).lower()
    if method == "gptq":
        return "gptq", 1
    if method == "awq":
        return "awq", 0
    packing = qcfg.get("packing_format", "auto_round:auto_gptq")
    if packing in ("auto_round:auto_gptq", "auto_round:gptq", "auto"):
        return "gptq", 1
    if packing in ("auto_round", "auto_round:gptqmodel"):
        return "gptq", 0
    if packing in ("auto_round:auto_awq", "auto_round:awq"):
        return "awq", 0
    raise AssertionError(f"unexpected packing_format {packing!r}")


def _unpack_le(words: torch.Tensor, bits: int, axis: int) -> np.ndarray:
    """Unsigned ``bits``-bit values from int32 words along ``axis``.

    AutoRound's pack loops put value i of each run at bit offset ``i*bits`` of a
    little-endian stream of int32 words (``intweight << (arange(32//b) * b)`` for 2/4/8 bits;
    the 10 + straddle + 10 + straddle + 10 routine of ``pack_3bits`` for 3 bits).  Here:
    bytes -> bits (LSB first) -> consecutive groups of ``bits`` bits.
    """
    w = np.ascontiguousarray(np.moveaxis(words.numpy().astype(np.int32), axis, -1))
    stream = np.unpackbits(w.astype("<i4").view(np.uint8), axis=-1, bitorder="little")
    vals = stream.reshape(*stream.shape[:-1], -1, bits).astype(np.int64)
    vals = (vals << np.arange(bits, dtype=np.int64)).sum(-1)
    return np.moveaxis(vals, -1, axis)


#: AWQ (``WQLinear_GEMM.from_linear``: ``new_order_map = [0, 4, 1, 5, 2, 6, 3, 7] * bits``):
#: logical value i of each run of 8 sits in stored slot AWQ_SLOT_OF[i].
AWQ_SLOT_OF = np.array([0, 4, 1, 5, 2, 6, 3, 7])


def _awq_logical(stored: np.ndarray) -> np.ndarray:
    n = stored.shape[-1]
    runs = stored.reshape(*stored.shape[:-1], n // 8, 8)
    return runs[..., AWQ_SLOT_OF].reshape(stored.shape)


@dataclass
class RawLayer:
    """One quantized layer as stored, decoded without quantlinear."""

    name: str
    layout: str
    bits: int
    group_size: int
    in_features: int
    out_features: int
    codes: np.ndarray  # [N, K]
    zeros: np.ndarray  # [N, G] true zero points
    scales: np.ndarray  # [N, G] float64 (exact fp16 values)

    def dequantize(self) -> torch.Tensor:
        gi = np.arange(self.in_features) // self.group_size
        w = (self.codes - self.zeros[:, gi]).astype(np.float64) * self.scales[:, gi]
        return torch.from_numpy(w).to(torch.float32)


def layer_group_size(qcfg: dict[str, Any], name: str, K: int) -> int:
    """Effective group size of ``name``: an exact extra_config entry, else the first regex
    key that matches (AutoRound's get_layer_config order), else the global value."""
    extra = qcfg.get("extra_config") or {}
    cfg = extra.get(name)
    if cfg is None:
        cfg = next((c for k, c in extra.items() if re.search(k, name)), None)
    g = (cfg or {}).get("group_size", qcfg.get("group_size", qcfg.get("q_group_size")))
    return K if g in (-1, 0) else int(g)


def decode_layer(tensors: dict[str, torch.Tensor], name: str, layout: str, zero_offset: int, K: int, N: int,
                 g: int) -> RawLayer:
    qw, qz, sc = tensors[f"{name}.qweight"], tensors[f"{name}.qzeros"], tensors[f"{name}.scales"]
    G = sc.shape[0]
    assert G == -(-K // g), f"{name}: {G} scale rows for K={K}, group_size={g}"
    if layout == "gptq":  # qweight [K*b/32, N] along K; qzeros [G, N*b/32] along N
        bits = qw.shape[0] * 32 // K
        codes = _unpack_le(qw, bits, 0).T
        zeros = _unpack_le(qz, bits, 1)
    else:  # awq: qweight [K, N*b/32] and qzeros [G, N*b/32], both along N, interleaved
        bits = qw.shape[1] * 32 // N
        codes = _awq_logical(_unpack_le(qw, bits, 1)).T
        zeros = _awq_logical(_unpack_le(qz, bits, 1))
    zeros = zeros + zero_offset
    assert codes.shape == (N, K) and zeros.shape == (G, N), (name, codes.shape, zeros.shape)
    return RawLayer(name, layout, bits, g, K, N, np.ascontiguousarray(codes), np.ascontiguousarray(zeros.T),
                    sc.double().numpy().T.copy())


def autoround_unpack_dequant(tensors: dict[str, torch.Tensor], raw: RawLayer, zero_offset: int) -> torch.Tensor:
    """[N, K] weight as AutoRound's own pure-torch layer code dequantizes it (scales in fp32)."""
    name = raw.name
    qw, qz = tensors[f"{name}.qweight"], tensors[f"{name}.qzeros"]
    sc = tensors[f"{name}.scales"].float()
    K, N = raw.in_features, raw.out_features
    if raw.layout == "awq":
        from auto_round.export.export_to_awq.utils import dequantize_gemm

        return dequantize_gemm(qw, qz, sc, raw.bits, raw.group_size).float().t().contiguous()
    if zero_offset == 1:
        from auto_round_extension.torch.qlinear_torch_zp import QuantLinear
    else:
        from auto_round_extension.torch.qlinear_torch import QuantLinear
    layer = QuantLinear(raw.bits, raw.group_size, K, N, False)
    layer.qweight, layer.qzeros, layer.scales = qw, qz, sc
    with torch.no_grad():
        return layer(torch.eye(K, dtype=torch.float32)).t().contiguous()


def linear_weight_of(layer: nn.Module, K: int, dtype: torch.dtype) -> torch.Tensor:
    """The [N, K] weight a (quantized) linear layer applies: f(I) - f(0), in float32."""
    with torch.no_grad():
        eye = torch.eye(K, dtype=dtype)
        y = layer(eye).float() - layer(torch.zeros(1, K, dtype=dtype)).float()
    return y.t().contiguous()


# ---- skeletons and the three model readers ------------------------------------------------------
def skeleton_from_export(d: Path) -> nn.Module:
    """A float model built from the export's config.json, without its quantization_config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(d))
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    torch.manual_seed(SEED + 1)  # random init that must be fully overwritten by the load
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def load_quantlinear(d: Path, backend: str) -> nn.Module:
    m = skeleton_from_export(d)
    return quantlinear.load_quantized(m, d, backend=backend, dtype=torch.float32, device="cpu").eval()


def logits_of(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(INPUT_IDS).logits.float()


@dataclass
class AutoRoundReference:
    """What AutoRound's loader made of an export (the model itself is dropped after use)."""

    logits: torch.Tensor
    info: dict[str, Any]
    dtype: torch.dtype
    backends: dict[str, str]  # layer -> module class AutoRound put there
    layer_weights: dict[str, torch.Tensor]  # layer -> [N, K] weight the backend applies
    float_linear: list[str]


def load_autoround_reference(d: Path, quant_method: str, layer_dims: dict[str, tuple[int, int]]) -> AutoRoundReference:
    from transformers import AutoModelForCausalLM, AutoRoundConfig

    kw: dict[str, Any] = {}
    if quant_method in ("gptq", "awq"):
        # Without it transformers routes gptq/awq configs to optimum / gptqmodel; with it,
        # AutoRound's converter takes them (convert_model.py: gptq -> auto_round:auto_gptq,
        # awq -> auto_round:auto_awq).
        kw["quantization_config"] = AutoRoundConfig()
    model, info = AutoModelForCausalLM.from_pretrained(
        str(d), dtype=torch.float32, device_map="cpu", output_loading_info=True, **kw
    )
    model.eval()
    dtype = next(model.parameters()).dtype
    backends, weights = {}, {}
    for name, (K, N) in layer_dims.items():
        mod = model.get_submodule(name)
        backends[name] = f"{type(mod).__module__}.{type(mod).__name__}"
        weights[name] = linear_weight_of(mod, K, dtype)
    float_linear = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    ref = AutoRoundReference(logits_of(model), {k: v for k, v in info.items()}, dtype, backends, weights, float_linear)
    del model
    return ref


def loading_info_problems(info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> list[str]:
    """Reasons not to trust a from_pretrained load. A trivial g_idx AutoRound does not register
    is tolerated (intel/auto-round#1154: ARK ignores it; it equals k // group_size)."""
    problems = []
    for key in ("missing_keys", "mismatched_keys", "error_msgs"):
        if info.get(key):
            problems.append(f"{key}: {sorted(map(str, info[key]))[:8]}")
    for k in sorted(info.get("unexpected_keys") or ()):
        if k.endswith(".g_idx") and k in tensors:
            g = tensors[k]
            name = k[: -len(".g_idx")]
            G = tensors[f"{name}.scales"].shape[0]
            K = g.numel()
            if torch.equal(g.long(), torch.arange(K) // (K // G)):
                continue
        problems.append(f"unexpected key {k}")
    return problems


# ---- one export, with everything derived from it, computed lazily once --------------------------
@dataclass
class Export:
    variant: Variant
    dir: Path
    _cache: dict[str, Any] = field(default_factory=dict)

    def _memo(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    @property
    def config(self) -> dict[str, Any]:
        return self._memo("config", lambda: read_config(self.dir))

    @property
    def qcfg(self) -> dict[str, Any]:
        return self.config["quantization_config"]

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return self._memo("tensors", lambda: read_tensors(self.dir))

    @property
    def layout(self) -> tuple[str, int]:
        return layout_of(self.qcfg)

    @property
    def layer_dims(self) -> dict[str, tuple[int, int]]:
        """Quantized layer -> (in_features, out_features), from the skeleton."""

        def dims():
            sk = skeleton_from_export(self.dir)
            return {n: (sk.get_submodule(n).in_features, sk.get_submodule(n).out_features)
                    for n in quantized_layer_names(self.tensors)}

        return self._memo("dims", dims)

    @property
    def raw_layers(self) -> dict[str, RawLayer]:
        def decode():
            layout, off = self.layout
            return {n: decode_layer(self.tensors, n, layout, off, K, N, layer_group_size(self.qcfg, n, K))
                    for n, (K, N) in self.layer_dims.items()}

        return self._memo("raw", decode)

    def exact_model(self) -> nn.Module:
        """The export dequantized by :func:`decode_layer` into a plain fp32 model."""
        m = skeleton_from_export(self.dir)
        sd = {k: v.float() for k, v in self.tensors.items() if v.dtype.is_floating_point}
        for n, raw in self.raw_layers.items():
            for suffix in ("qweight", "qzeros", "scales"):
                sd.pop(f"{n}.{suffix}", None)
            sd[f"{n}.weight"] = raw.dequantize()
        sd = {k: v for k, v in sd.items() if not k.endswith(".g_idx")}
        res = m.load_state_dict(sd, strict=False)
        tied = getattr(m.config, "tie_word_embeddings", False)
        allowed_missing = {"lm_head.weight"} if tied else set()
        assert set(res.missing_keys) <= allowed_missing and not res.unexpected_keys, res
        return m.eval()

    @property
    def exact_logits(self) -> torch.Tensor:
        return self._memo("exact_logits", lambda: logits_of(self.exact_model()))

    @property
    def reference(self) -> AutoRoundReference:
        return self._memo("ref", lambda: load_autoround_reference(self.dir, self.variant.quant_method, self.layer_dims))

    def quantlinear_model(self, backend: str) -> nn.Module:
        return self._memo(f"ql:{backend}", lambda: load_quantlinear(self.dir, backend))

    def quantlinear_logits(self, backend: str) -> torch.Tensor:
        return self._memo(f"ql_logits:{backend}", lambda: logits_of(self.quantlinear_model(backend)))


class ExportCache:
    """Session-wide: each variant is quantized by AutoRound once, on first use."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._exports: dict[str, Export | BaseException] = {}

    def get(self, vid: str) -> Export:
        if vid not in self._exports:
            v = VARIANTS[vid]
            try:
                self._exports[vid] = Export(v, export_with_autoround(v, self.root / vid))
            except Exception as e:  # remembered: a failed export is not retried by every test
                self._exports[vid] = e
        got = self._exports[vid]
        if isinstance(got, BaseException):
            raise AssertionError(f"AutoRound could not export {vid}: {type(got).__name__}: {got}") from got
        return got

    def copy_of(self, vid: str, dest: Path) -> Path:
        """A private, writable copy of an export (for the bad-input tests)."""
        src = self.get(vid).dir
        shutil.copytree(src, dest)
        return dest


# ---- expectations independent of quantlinear's selection code -----------------------------------
def expected_auto_kernel(bits: int, group_size: int, K: int, N: int) -> str:
    """The CPU kernel backend="auto" should pick for these fp32 loads, from the kernels' documented limits.

    cpu.native_f32 (prio 40, the C kernel built on first use) takes every 2-8-bit layer with an even
    group size; torch's packed int4/int8 ops are scalar in fp32, so cpu.int4pack / cpu.int8pack /
    cpu.int4x2 refuse fp32 and, where the C kernel cannot be built, cpu.dequant takes the layer.
    """
    import quantlinear as ql
    from quantlinear_cpu.kernels.native import NativeF32Linear

    spec = ql.LayerSpec(ql.Scheme(bits=bits, group_size=group_size), "gptq_v2", K, N, False, torch.float32, "cpu", False, "probe")
    return "cpu.native_f32" if NativeF32Linear.can_implement(spec) else "cpu.dequant"


def write_report(path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(RESULTS, indent=2, sort_keys=True, default=str))
