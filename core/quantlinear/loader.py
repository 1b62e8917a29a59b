"""``load_quantized``: a float skeleton plus a quantized checkpoint gives a runnable model.

The skeleton may live on the ``meta`` device, so a large model never materializes in float.
Each quantized ``nn.Linear`` is replaced by the kernel selected for it; tensors are streamed
shard by shard, and each quantized layer is repacked as soon as all its tensors have arrived,
so peak memory stays near the checkpoint size.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .checkpoint import Checkpoint, RenamedCheckpoint
from .config import QuantConfig, read_quant_config
from .devices import default_device
from .errors import CheckpointError, ConfigError, QuantLinearError, UnsupportedSchemeError
from .formats import float_format_for, get_format
from .formats.gptq import g_idx_is_trivial
from .progress import Progress
from .registry import Registry
from .select import Selection, select_kernel
from .spec import LayerSpec

log = logging.getLogger("quantlinear")

#: Checkpoints larger than this show a progress bar by default.
PROGRESS_BYTES = 256 * 1024 * 1024

_QUANT_MARKERS = ("qweight", "weight_packed", "weight_scale")  # int; MXFP4/MXINT4/NVFP4; MXFP8/FP8 (float8 weight)


def quantized_prefixes(ckpt) -> list[str]:
    """Module names whose tensors in ``ckpt`` are packed (the tensors, not the config, are the truth).

    A checkpoint that knows its quantized layers otherwise (a GGUF file: by tensor type) says so
    through its own ``quantized_prefixes()``.
    """
    own = getattr(ckpt, "quantized_prefixes", None)
    if own is not None:
        return own()
    return sorted({k.rsplit(".", 1)[0] for k in ckpt.keys() if k.rsplit(".", 1)[-1] in _QUANT_MARKERS})


def open_checkpoint(path: str | os.PathLike):
    """(checkpoint, QuantConfig) of a safetensors checkpoint, or of a ``.gguf`` file (or a folder
    holding exactly one and no safetensors), read through :mod:`quantlinear.gguf_file`."""
    from .gguf_file import GGUFCheckpoint, gguf_path

    g = gguf_path(path)
    if g is not None:
        ckpt = GGUFCheckpoint(g)
        return ckpt, ckpt.quant_config()
    ckpt = Checkpoint(path)
    qcfg, _model_cfg = read_quant_config(ckpt.directory)
    return ckpt, qcfg


def layer_format(qcfg: QuantConfig, name: str, scheme) -> str | None:
    """The packing format of one layer: the config's own per-layer answer where it has one (GGUF),
    else the config's format, or the float layout of a per-layer float override."""
    per_layer = getattr(qcfg, "layer_format", None)
    if per_layer is not None:
        return per_layer(name)
    if scheme.data_type != "int" and scheme != qcfg.scheme:
        return float_format_for(scheme.data_type, scheme.bits, qcfg.packing_format)
    return qcfg.format


@dataclass
class LoadReport:
    """What ``load_quantized`` did: the kernel of every layer and why, plus warnings."""

    path: str
    config: QuantConfig
    device: torch.device
    dtype: torch.dtype
    layers: dict[str, Selection] = field(default_factory=dict)
    float_layers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skeleton_dtype: torch.dtype | None = None
    #: embeddings kept quantized (GGUF token_embd): module name -> GGUF type
    quantized_embeddings: dict[str, str] = field(default_factory=dict)

    def kernel_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for sel in self.layers.values():
            out[sel.kernel.name] = out.get(sel.kernel.name, 0) + 1
        return out

    def summary(self) -> str:
        counts = ", ".join(f"{k} x{n}" for k, n in sorted(self.kernel_counts().items()))
        emb = f"{len(self.quantized_embeddings)} quantized embedding(s); " if self.quantized_embeddings else ""
        return (
            f"{len(self.layers)} quantized layers ({counts}); {len(self.float_layers)} float linear layers; {emb}"
            f"device={self.device}, dtype={str(self.dtype).replace('torch.', '')}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "config": self.config.to_dict(),
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "layers": {n: s.to_dict() for n, s in self.layers.items()},
            "float_layers": self.float_layers,
            "quantized_embeddings": self.quantized_embeddings,
            "warnings": self.warnings,
        }


def _linear_dims(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers GPT-2 style
        return module.weight.shape[0], module.nf
    return None


def _float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.dtype.is_floating_point:
            return p.dtype
    return torch.get_default_dtype()


def _model_device(model: nn.Module) -> torch.device | None:
    for p in model.parameters():
        if not p.is_meta:
            return p.device
    return None


def plan_layers(model: nn.Module, ckpt: Checkpoint, qcfg: QuantConfig, *, device: torch.device, dtype: torch.dtype, report: LoadReport) -> dict[str, LayerSpec]:
    """Find the checkpoint's quantized layers and build a spec for each; validate against the model."""
    modules = dict(model.named_modules())
    prefixes = quantized_prefixes(ckpt)
    specs: dict[str, LayerSpec] = {}
    for name in prefixes:
        mod = modules.get(name)
        if mod is None:
            marker = getattr(ckpt, "original", None) if hasattr(ckpt, "quantized_prefixes") else None
            tname = marker(f"{name}.weight") if marker else f"{name}.qweight"  # GGUF: name the file's tensor
            raise CheckpointError(f"checkpoint tensor {tname} maps to no module of the model (no module named {name!r})")
        dims = _linear_dims(mod)
        if dims is None:
            raise CheckpointError(f"layer {name!r}: checkpoint holds quantized tensors but the module is a {type(mod).__name__}, not a Linear")
        scheme = qcfg.layer_scheme(_ckpt_name(ckpt, name))
        if scheme is None:
            raise ConfigError(f"layer {name!r}: the checkpoint holds packed tensors but its config keeps the layer in float (bits 16)")
        fmt = layer_format(qcfg, _ckpt_name(ckpt, name), scheme)
        if fmt is None or scheme.data_type not in get_format(fmt).data_types:
            raise UnsupportedSchemeError(f"layer {name!r}: scheme {scheme.id} with packing {qcfg.packing_format!r} has no loader yet")
        has_bias = f"{name}.bias" in ckpt
        module_bias = getattr(mod, "bias", None) is not None
        if has_bias != module_bias:
            raise CheckpointError(
                f"layer {name!r}: the model's module {'has' if module_bias else 'has no'} bias but the checkpoint "
                f"{'has' if has_bias else 'has no'} tensor {name}.bias"
            )
        act_order = False
        if f"{name}.g_idx" in ckpt:
            g = ckpt.get(f"{name}.g_idx")
            gs = scheme.group_size_for(dims[0])
            if g.shape != (dims[0],):
                raise CheckpointError(f"layer {name!r}: tensor {name}.g_idx has shape {tuple(g.shape)}, expected ({dims[0]},)")
            act_order = not g_idx_is_trivial(g, dims[0], gs)
        spec = LayerSpec(scheme, fmt, dims[0], dims[1], has_bias, dtype, device, act_order, name)
        reason = get_format(spec.format).check_shape(spec)
        if reason:
            raise CheckpointError(f"layer {name!r}: {reason}")
        specs[name] = spec
    for name, mod in modules.items():
        if name in specs or _linear_dims(mod) is None:
            continue
        report.float_layers.append(name)
        scheme = qcfg.layer_scheme(_ckpt_name(ckpt, name))
        in_blocks = not qcfg.block_names or qcfg._in_blocks(name)
        if scheme is not None and in_blocks and f"{name}.weight" in ckpt and qcfg.block_names:
            report.warnings.append(f"layer {name!r}: config says {scheme.id} but the checkpoint stores it in float; loaded as float")
    return specs


def _ckpt_name(ckpt, module_name: str) -> str:
    """The checkpoint's name for a module (differs when a key mapping renames the checkpoint)."""
    if isinstance(ckpt, RenamedCheckpoint):
        for suffix in (".qweight", ".weight", ".weight_packed"):
            if module_name + suffix in ckpt:
                return ckpt.original(module_name + suffix)[: -len(suffix)]
    return module_name


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _aliases(model: nn.Module) -> dict[str, list[str]]:
    """Parameter/buffer names that share one tensor (tied weights), keyed by each name."""
    by_id: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(n)
    out = {}
    for names in by_id.values():
        for n in names:
            out[n] = names
    return out


def _assign(model: nn.Module, full: str, t: torch.Tensor, device: torch.device, dtype: torch.dtype, aliases: dict[str, list[str]]) -> None:
    mod_name, _, attr = full.rpartition(".")
    try:
        mod = model.get_submodule(mod_name) if mod_name else model
    except AttributeError:
        raise CheckpointError(f"checkpoint tensor {full!r} maps to no module of the model") from None
    if attr in mod._parameters and mod._parameters[attr] is not None:
        old = mod._parameters[attr]
        if tuple(old.shape) != tuple(t.shape):
            raise CheckpointError(f"checkpoint tensor {full!r} has shape {tuple(t.shape)}, the model expects {tuple(old.shape)}")
        new_t = t.to(device=device, dtype=dtype if t.dtype.is_floating_point else t.dtype)
        p = nn.Parameter(new_t, requires_grad=False)
        for alias in aliases.get(full, [full]):
            amod_name, _, aattr = alias.rpartition(".")
            amod = model.get_submodule(amod_name) if amod_name else model
            amod._parameters[aattr] = p
    elif attr in mod._buffers and mod._buffers[attr] is not None:
        old = mod._buffers[attr]
        if tuple(old.shape) != tuple(t.shape):
            raise CheckpointError(f"checkpoint tensor {full!r} has shape {tuple(t.shape)}, the model expects {tuple(old.shape)}")
        mod._buffers[attr] = t.to(device=device, dtype=dtype if t.dtype.is_floating_point else t.dtype)
    else:
        raise CheckpointError(f"checkpoint tensor {full!r} maps to no parameter or buffer of the model")


def load_quantized(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    backend: str = "auto",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    registry: Registry | None = None,
    strict: bool = True,
    progress: bool | None = None,
    priorities: dict[str, int] | None = None,
    key_mapping=None,
) -> nn.Module:
    """Replace the quantized linears of ``model`` by kernels and load ``path`` into it.

    ``model`` is a float skeleton whose module names match the checkpoint (it may be on the
    ``meta`` device).  ``backend`` is ``"auto"``, a plugin name or a kernel name.  ``device``
    defaults to the model's device (the current accelerator for a meta skeleton); ``dtype``
    to the model's float dtype.  With ``strict`` (default), checkpoint tensors that map to
    nothing and model tensors the checkpoint does not provide are errors.  Returns ``model``
    with ``model.quantlinear_report`` (a :class:`LoadReport`).  ``priorities`` overrides kernel
    priorities for ``auto`` (``{"cpu.dequant": 100}``; also env ``QUANTLINEAR_PRIORITY``).
    ``key_mapping`` renames checkpoint tensors onto the model's module tree (regex -> replacement,
    applied in order, or a callable), for checkpoints quantized under another naming.
    """
    if not isinstance(model, nn.Module):
        raise QuantLinearError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(backend, str) or not backend:
        raise QuantLinearError(f"backend must be a non-empty string, got {backend!r}")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise QuantLinearError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    ckpt, qcfg = open_checkpoint(path)
    if key_mapping and not isinstance(ckpt, Checkpoint):
        raise QuantLinearError(f"{path}: key_mapping does not apply to a GGUF file (quantlinear maps llama.cpp's tensor names itself)")
    if key_mapping:
        ckpt = RenamedCheckpoint(ckpt, key_mapping)
        if ckpt.dropped:
            log.info("quantlinear: key mapping dropped %d checkpoint tensors (e.g. %s)", len(ckpt.dropped), ckpt.dropped[0])
    dev = torch.device(device) if device is not None else (_model_device(model) or default_device())
    dt = dtype or _float_dtype(model)
    report = LoadReport(str(path), qcfg, dev, dt)
    if isinstance(ckpt, RenamedCheckpoint) and ckpt.dropped:
        report.warnings.append(f"key mapping dropped {len(ckpt.dropped)} checkpoint tensors the model does not hold (e.g. {ckpt.dropped[0]!r})")
    report.skeleton_dtype = _float_dtype(model)
    prepare = getattr(ckpt, "prepare_model", None)
    if prepare is not None:  # GGUF: quantized token embeddings become GGUFEmbedding modules
        prepare(model, dtype=dt, report=report)

    specs = plan_layers(model, ckpt, qcfg, device=dev, dtype=dt, report=report)
    layers = {}
    for name, spec in specs.items():
        sel = select_kernel(spec, backend, registry=registry, priorities=priorities)
        report.layers[name] = sel
        layers[name] = sel.kernel(spec)
        _set_module(model, name, layers[name])
    aliases = _aliases(model)

    expected_q = {name: set(get_format(spec.format).tensor_specs(spec)) for name, spec in specs.items()}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    loaded: set[str] = set()
    show = progress if progress is not None else ckpt.total_bytes >= PROGRESS_BYTES
    with Progress(ckpt.total_bytes, "quantlinear: loading", enabled=show) as bar:
        for f, names in ckpt.items_by_file():
            for full in names:
                prefix, _, suffix = full.rpartition(".")
                t = ckpt.get(full)
                if prefix in layers and suffix in expected_q[prefix]:
                    t = get_format(specs[prefix].format).adapt_tensor(suffix, t, specs[prefix])
                    pending.setdefault(prefix, {})[suffix] = t
                    required = {n for n, ts in get_format(specs[prefix].format).tensor_specs(specs[prefix]).items() if not ts.optional}
                    present = set(pending[prefix])
                    if required <= present and (f"{prefix}.g_idx" not in ckpt or "g_idx" in present):
                        layers[prefix].load_checkpoint(pending.pop(prefix))
                        layers[prefix].post_load()
                elif prefix in layers:
                    raise CheckpointError(f"layer {prefix!r}: unexpected tensor {full!r} for format {specs[prefix].format}")
                else:
                    try:
                        _assign(model, full, t, dev, dt, aliases)
                    except CheckpointError:
                        if strict:
                            raise
                        report.warnings.append(f"ignored checkpoint tensor {full!r}: maps to nothing in the model")
                        continue
                    loaded.update(aliases.get(full, [full]))
                bar.update(t.numel() * t.element_size(), postfix=prefix)
    for prefix, got in pending.items():
        missing = sorted(set(expected_q[prefix]) - set(got) - {"g_idx"})
        raise CheckpointError(f"layer {prefix!r}: tensors {missing} are missing from the checkpoint")

    _finish(model, loaded, set(layers), dev, dt, strict, report)
    model.quantlinear_report = report
    log.info("quantlinear: %s", report.summary())
    for w in report.warnings:
        log.warning("quantlinear: %s", w)
    return model


def _finish(model: nn.Module, loaded: set[str], qlayers: set[str], dev: torch.device, dt: torch.dtype, strict: bool, report: LoadReport) -> None:
    """Check nothing was left unloaded; move remaining float tensors to the target device."""
    missing = []
    for n, p in model.named_parameters(remove_duplicate=False):
        owner = n.rpartition(".")[0]
        if owner in qlayers or n in loaded:
            continue
        missing.append(n)
    if missing and strict:
        raise CheckpointError(f"{len(missing)} model parameters are not in the checkpoint: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    for n in missing:
        report.warnings.append(f"parameter {n!r} not in the checkpoint; left as initialized")
    meta_buffers = []
    model_dt = report.skeleton_dtype
    for mname, mod in model.named_modules():
        if mname in qlayers:
            continue
        for bname, b in list(mod._buffers.items()):
            if b is None:
                continue
            if b.is_meta:
                meta_buffers.append(f"{mname}.{bname}" if mname else bname)
            elif b.device != dev or (b.dtype == model_dt and model_dt != dt):
                # Buffers in the skeleton's dtype follow the model to ``dtype``; buffers that
                # deliberately differ (fp32 rotary tables in a bf16 model) keep their dtype.
                mod._buffers[bname] = b.to(dev, dt if b.dtype == model_dt else b.dtype)
        for pname, p in list(mod._parameters.items()):
            if p is not None and not p.is_meta and (p.device != dev or (p.dtype.is_floating_point and p.dtype != dt)):
                mod._parameters[pname] = nn.Parameter(p.detach().to(dev, dt if p.dtype.is_floating_point else p.dtype), requires_grad=False)
    if meta_buffers:
        raise CheckpointError(
            f"buffers {meta_buffers[:10]} are still on the meta device and not in the checkpoint "
            "(non-persistent buffers such as rotary tables must be built on a real device: "
            "build the skeleton inside `with quantlinear.skeleton():`, which keeps buffers real and parameters on meta)"
        )
