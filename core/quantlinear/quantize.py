"""Round-to-nearest quantization written in AutoRound's checkpoint format.

The rounding follows AutoRound's RTN exactly (``auto_round/data_type/int.py``):

* symmetric ("full range"): per group, ``scale = ±max(|wmin|, |wmax|) / 2**(b-1)`` in fp16,
  the sign chosen so that the larger-magnitude extreme maps onto ``-2**(b-1)`` (so stored
  scales can be negative), codes ``clamp(round(w/scale), -2**(b-1), 2**(b-1)-1) + 2**(b-1)``;
* asymmetric: ``scale = (wmax - wmin) / (2**b - 1)`` in fp16 (``wmin <= 0 <= wmax``),
  ``zero = round(-wmin/scale)``, codes ``clamp(round(w/scale) + zero, 0, 2**b-1)``.
  AutoRound's ``quant_tensor_asym`` evaluates ``(wmax - wmin) / maxq`` in the *weight's*
  dtype before casting to fp16, so for a bf16/fp16 weight that subtraction rounds; we do
  the same (see :func:`quantize_weight`), which makes our checkpoints bit-identical to
  AutoRound's RTN export of the same weights (checked by ``tests/interop``).

``format="auto_round"`` picks the packing the way AutoRound's exporter does: sym ->
``auto_round:auto_gptq``; 4-bit asym -> ``auto_round:auto_awq``; other asym ->
``auto_round`` (raw zeros).  Layers whose dimensions are not multiples of 32 stay in float
and are listed in ``extra_config`` with ``bits: 16``, as AutoRound does.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from safetensors.torch import save_file
from torch import nn

from .errors import QuantLinearError, UnsupportedSchemeError
from .formats import AUTOROUND_PACKING, IntWeights, get_format
from .progress import Progress
from .scheme import Scheme, get_scheme
from .spec import LayerSpec

__all__ = ["quantize_weight", "quantize", "save_quantized", "QuantizedCheckpoint"]


def quantize_weight(w: torch.Tensor, scheme: Scheme) -> IntWeights:
    """RTN-quantize an ``[N, K]`` weight to canonical integer weights (scales in fp16)."""
    if scheme.data_type != "int":
        raise UnsupportedSchemeError(f"RTN quantization supports int schemes, not {scheme.id}")
    N, K = w.shape
    g = scheme.group_size_for(K)
    G = -(-K // g)
    # Group extremes are taken in the weight's own float dtype (exact: min/max only select
    # values); only the asymmetric scale arithmetic below depends on that dtype.
    wn = w.detach()
    if not wn.dtype.is_floating_point:
        wn = wn.to(torch.float32)
    pad = G * g - K
    if pad:
        wn = torch.nn.functional.pad(wn, (0, pad))
    grp_n = wn.reshape(N, G, g)
    wmin_n = grp_n.amin(-1).clamp(max=0)
    wmax_n = grp_n.amax(-1).clamp(min=0)
    grp = grp_n.to(torch.float32)
    b = scheme.bits
    wmin = wmin_n.to(torch.float32)
    wmax = wmax_n.to(torch.float32)
    if scheme.sym:
        maxq = 2 ** (b - 1)
        wmin_abs, wmax_abs = -wmin, wmax
        max_v = (2 * (wmax_abs < wmin_abs).to(torch.float32) - 1) * torch.maximum(wmax_abs, wmin_abs)
        scale = (max_v / maxq).to(torch.float16).to(torch.float32)
        scale = torch.where(scale < 0, scale.clamp(max=-1e-5), scale.clamp(min=1e-5))
        q = torch.clamp(torch.round(grp / scale.unsqueeze(-1)), -maxq, maxq - 1) + maxq
        zeros = torch.full((N, G), maxq, dtype=torch.int16)
    else:
        maxq = 2**b - 1
        # Why the native dtype: AutoRound (``auto_round/data_type/int.py``,
        # ``quant_tensor_asym``) computes ``((wmax - wmin) / maxq).to(fp16)`` on the weight
        # tensor as is; for bf16 weights (its CPU RTN flow quantizes the bf16 cast of a
        # model, as its bf16 exports and bit-identical codes show) the
        # bf16 subtraction/division rounds, and computing it in fp32 instead gives scales
        # that differ by one fp16 ulp and codes that differ by up to 2.  The symmetric path
        # needs no such care: negation, max and division by 2**(b-1) are exact in any dtype.
        scale = ((wmax_n - wmin_n) / maxq).to(torch.float16).to(torch.float32).clamp(min=1e-5)
        zp = torch.round(-wmin / scale)
        q = torch.clamp(torch.round(grp / scale.unsqueeze(-1)) + zp.unsqueeze(-1), 0, maxq)
        zeros = zp.to(torch.int16)
    q = q.reshape(N, G * g)[:, :K].to(torch.uint8).contiguous()
    return IntWeights(qweight=q, zeros=zeros, scales=scale.to(torch.float16), g_idx=None)


def autoround_packing_for(schemes: Iterable[Scheme]) -> str:
    """The packing AutoRound's ``format="auto_round"`` export chooses for these layer schemes."""
    schemes = list(schemes)
    if all(s.sym for s in schemes):
        return "auto_round:auto_gptq"
    if all(s.bits == 4 for s in schemes):
        return "auto_round:auto_awq"
    return "auto_round"


@dataclass
class QuantizedCheckpoint:
    tensors: dict[str, torch.Tensor]
    quantization_config: dict[str, Any]
    layer_schemes: dict[str, Scheme]


def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear)


def _block_names(model: nn.Module, names: Iterable[str]) -> list[str]:
    """ModuleList prefixes holding quantized layers (AutoRound's block_name_to_quantize)."""
    lists = [n for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and n]
    used = []
    for b in lists:
        if any(n.startswith(b + ".") for n in names) and not any(b.startswith(u + ".") for u in used):
            used.append(b)
    return used


def quantize(
    model: nn.Module,
    scheme: str | Scheme = "W4A16",
    *,
    format: str = "auto_round",
    skip: Iterable[str] = ("lm_head",),
    layer_config: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: torch.dtype = torch.float16,
    progress: bool = False,
) -> QuantizedCheckpoint:
    """RTN-quantize every eligible ``nn.Linear`` of ``model``; return checkpoint tensors and config.

    ``skip``: module names (or regexes) kept in float.  ``layer_config``: per-layer overrides
    (exact names or regexes, AutoRound-style fields such as ``{"bits": 8}``; ``bits: 16``
    keeps the layer in float).  Float tensors are written in ``dtype``.
    """
    base = get_scheme(scheme)
    if base.data_type != "int" or not base.weight_only:
        raise UnsupportedSchemeError(f"quantize() writes int weight-only schemes; {base.id} is not one")
    layer_config = dict(layer_config or {})
    skip = tuple(skip)

    def layer_scheme(name: str) -> Scheme | None:
        if any(name == s or re.fullmatch(s, name) for s in skip):
            return None
        cfg = layer_config.get(name)
        if cfg is None:
            for k, v in layer_config.items():
                if re.search(k, name):
                    cfg = v
                    break
        if cfg is None:
            return base
        if int(cfg.get("bits", base.bits)) >= 16:
            return None
        return Scheme.from_dict(cfg, base=base)

    chosen: dict[str, Scheme] = {}
    kept_float: list[str] = []
    for name, m in model.named_modules():
        if not _is_linear(m):
            continue
        s = layer_scheme(name)
        if s is None or m.in_features % 32 or m.out_features % 32:
            kept_float.append(name)
            continue
        chosen[name] = s
    if not chosen:
        raise QuantLinearError("quantize(): the model has no nn.Linear layer eligible for quantization")
    if format == "auto_round":
        packing = autoround_packing_for(chosen.values())
    elif format in AUTOROUND_PACKING:
        packing = format
    else:
        raise UnsupportedSchemeError(f"unknown format {format!r}; use 'auto_round' or one of {sorted(AUTOROUND_PACKING)}")
    fmt = get_format(AUTOROUND_PACKING[packing])

    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    with Progress(len(chosen), "quantlinear: quantizing", enabled=progress, unit="layer") as bar:
        for name, s in chosen.items():
            m = model.get_submodule(name)
            spec = LayerSpec(s, fmt.name, m.in_features, m.out_features, m.bias is not None, dtype, "cpu", False, name)
            reason = fmt.check_shape(spec)
            if reason:
                raise QuantLinearError(f"layer {name!r}: cannot pack in {packing}: {reason}")
            if fmt.name == "awq" and not s.sym and s.bits != 4:
                raise UnsupportedSchemeError(f"layer {name!r}: the AWQ packing holds 4-bit layers only")
            iw = quantize_weight(m.weight.detach().cpu(), s)
            for k, v in fmt.pack(iw, spec).items():
                tensors[f"{name}.{k}"] = v
            if m.bias is not None:
                tensors[f"{name}.bias"] = m.bias.detach().cpu().to(torch.float16)
            bar.update(1)
    qnames = set(chosen)
    for full, t in model.state_dict(keep_vars=True).items():
        owner = full.rpartition(".")[0]
        if owner in qnames:
            continue
        key = id(t)
        if key in seen:  # tied weights: saved once, as transformers does
            continue
        seen[key] = full
        t = t.detach().cpu()
        tensors[full] = (t.to(dtype) if t.dtype.is_floating_point else t).contiguous()

    blocks = _block_names(model, qnames)
    extra: dict[str, dict[str, Any]] = {}
    for name, s in chosen.items():
        in_block = any(name.startswith(b + ".") for b in blocks)
        diff = {k: v for k, v in s.to_dict().items() if v != base.to_dict()[k]}
        if not in_block:
            diff = {k: s.to_dict()[k] for k in ("bits", "group_size", "sym", "data_type")}
        if diff:
            extra[name] = diff
    for name in kept_float:
        if any(name.startswith(b + ".") for b in blocks):
            extra[name] = {"bits": 16, "data_type": "fp"}
    qcfg: dict[str, Any] = {
        "quant_method": "auto-round",
        "packing_format": packing,
        "bits": base.bits,
        "group_size": base.group_size,
        "sym": base.sym,
        "data_type": "int",
        "block_name_to_quantize": blocks,
        "iters": 0,
        "provider": "quantlinear",
    }
    if extra:
        qcfg["extra_config"] = extra
    return QuantizedCheckpoint(tensors, qcfg, chosen)


def _parse_size(s: int | str) -> int:
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)\s*", s.upper())
    if not m:
        raise QuantLinearError(f"max_shard_size must be bytes or like '2GB', got {s!r}")
    return int(float(m.group(1)) * {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}[m.group(2)])


def save_quantized(
    model: nn.Module,
    out_dir: str | os.PathLike,
    scheme: str | Scheme = "W4A16",
    *,
    format: str = "auto_round",
    skip: Iterable[str] = ("lm_head",),
    layer_config: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: torch.dtype = torch.float16,
    max_shard_size: int | str = "5GB",
    progress: bool = False,
    config_transform: Callable[[dict], dict] | None = None,
) -> Path:
    """Quantize ``model`` (RTN) and write an AutoRound-format checkpoint directory.

    Writes ``config.json`` (the model's own config when it has one, plus
    ``quantization_config``), ``quantization_config.json`` and safetensors shards (with
    ``model.safetensors.index.json`` when sharded).  Transformers with AutoRound installed
    loads the result with ``AutoModelForCausalLM.from_pretrained``.
    """
    qc = quantize(model, scheme, format=format, skip=skip, layer_config=layer_config, dtype=dtype, progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {}
    hf_cfg = getattr(model, "config", None)
    if hf_cfg is not None and hasattr(hf_cfg, "to_dict"):
        cfg = hf_cfg.to_dict()
        cfg["torch_dtype"] = str(dtype).replace("torch.", "")
        cfg["dtype"] = cfg["torch_dtype"]
    cfg["quantization_config"] = qc.quantization_config
    if config_transform:
        cfg = config_transform(cfg)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    (out / "quantization_config.json").write_text(json.dumps(qc.quantization_config, indent=2))
    limit = _parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in qc.tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata=meta)
    else:
        weight_map = {}
        for i, sh in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(sh, str(out / fname), metadata=meta)
            weight_map.update({k: fname for k in sh})
        total = sum(t.numel() * t.element_size() for t in qc.tensors.values())
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return out
