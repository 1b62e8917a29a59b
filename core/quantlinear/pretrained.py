"""``quantlinear.from_pretrained``: a quantized Transformers model, Diffusers model or Diffusers
pipeline in one call.

The directory says what it holds:

* ``model_index.json`` and no ``config.json``: a Diffusers pipeline
  (:func:`quantlinear.integrations.diffusers.load_pipeline`);
* ``config.json`` with ``_class_name``: a Diffusers model (``FluxTransformer2DModel`` ...);
* ``config.json`` with ``architectures`` / ``model_type``: a Transformers model;
* ``config.json`` with neither, inside a pipeline folder (AutoRound's pipeline export writes
  such a config for the quantized transformer): the class is the folder's entry in the
  pipeline's ``model_index.json``.

The model is built on a :func:`quantlinear.skeleton` (parameters on ``meta``), then
:func:`quantlinear.load_quantized` fills it.  Transformers and Diffusers are optional: they are
imported only here, when needed, and a clear :class:`QuantLinearError` says which is missing.

The checkpoint's own quantization config always wins: a ``quantization_config=`` passed by the
user may only repeat it (or choose a ``backend``); a contradicting setting is a
:class:`ConfigError` naming the setting and both values.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .checkpoint import Checkpoint, RenamedCheckpoint
from .config import QuantConfig, read_quant_config
from .errors import CheckpointError, ConfigError, QuantLinearError
from .loader import load_quantized
from .qlinear import QuantLinear

__all__ = ["from_pretrained", "load_pipeline", "inspect_directory", "resolve_dtype", "check_user_quantization_config"]

log = logging.getLogger("quantlinear")

_QUANT_CONFIG_FILES = ("quantization_config.json", "quantize_config.json")
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


# ---- optional libraries -------------------------------------------------------------------------
def require(module: str, what: str):
    """Import an optional library or raise a QuantLinearError that says how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise QuantLinearError(
            f"{what} needs the optional package {module!r}, which is not installed ({e}); "
            f"install it with `pip install {module}` (or `pip install quantlinear[interop]`)"
        ) from None


# ---- arguments ----------------------------------------------------------------------------------
def resolve_dtype(dtype: Any = None, torch_dtype: Any = None) -> torch.dtype | str | None:
    """``dtype``/``torch_dtype`` (aliases; both given and different is an error) -> dtype, "auto" or None."""
    if dtype is not None and torch_dtype is not None and _norm_dtype(dtype) != _norm_dtype(torch_dtype):
        raise QuantLinearError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass one of them")
    return _norm_dtype(dtype if dtype is not None else torch_dtype)


def _norm_dtype(d: Any) -> torch.dtype | str | None:
    if d is None:
        return None
    if isinstance(d, torch.dtype):
        if not d.is_floating_point:
            raise QuantLinearError(f"dtype must be a floating torch.dtype, got {d!r}")
        return d
    if isinstance(d, str):
        s = d.strip().lower().replace("torch.", "")
        if s == "auto":
            return "auto"
        if s in _DTYPES:
            return _DTYPES[s]
    raise QuantLinearError(f"dtype must be a floating torch.dtype, a name such as 'bfloat16', or 'auto'; got {d!r}")


def _dtype_from_config(cfg: Mapping[str, Any]) -> torch.dtype:
    for key in ("dtype", "torch_dtype"):
        v = cfg.get(key)
        if v is None:
            continue
        d = _norm_dtype(v)
        if isinstance(d, torch.dtype):
            return d
    return torch.float32


def _norm_device(device: Any, what: str = "device") -> torch.device | None:
    if device is None:
        return None
    if isinstance(device, int) and not isinstance(device, bool):
        from .devices import default_device

        dev = default_device()
        return torch.device(dev.type, device)
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise QuantLinearError(f"{what}={device!r} is not a device: {e}") from None


# ---- the checkpoint's config wins ---------------------------------------------------------------
_USER_FIELDS = ("bits", "group_size", "sym", "data_type", "quant_method", "packing_format")
_IGNORED_FIELDS = {"backend", "torch_dtype", "dtype", "_commit_hash", "transformers_version", "modules_to_not_convert"}


def _norm_method(m: Any) -> str:
    m = str(getattr(m, "value", m)).lower()
    return "auto-round" if m in ("auto_round", "auto-round", "intel/auto-round") else m


def _norm_packing(p: Any) -> str:
    p = str(getattr(p, "value", p))
    return {"auto": "auto_round:auto_gptq", "auto_round:gptq": "auto_round:auto_gptq", "auto_round:awq": "auto_round:auto_awq"}.get(p, p)


def _user_settings(user: Any) -> tuple[dict[str, Any], str | None]:
    """(explicit settings, backend) of a user's quantization_config (a dict or a config object).

    Every key of a dict counts as explicit.  For an object (Transformers' / Diffusers'
    ``AutoRoundConfig``, ...), only fields that differ from a default-constructed instance of
    its class count: those objects carry defaults (bits 4, group size 128, sym True) that the
    user never chose, and those must not override or contradict the checkpoint.
    """
    if isinstance(user, Mapping):
        d = dict(user)
        unknown = sorted(k for k in d if k not in _USER_FIELDS and k not in _IGNORED_FIELDS)
        if unknown:
            raise ConfigError(
                f"quantization_config: unknown setting(s) {unknown}; quantlinear takes {list(_USER_FIELDS)} "
                "(checked against the checkpoint) and 'backend'"
            )
        return {k: d[k] for k in _USER_FIELDS if k in d and d[k] is not None}, d.get("backend")
    to_dict = getattr(user, "to_dict", None)
    d = dict(to_dict()) if callable(to_dict) else dict(vars(user))
    try:
        default = type(user)()
        dd = dict(default.to_dict()) if callable(getattr(default, "to_dict", None)) else dict(vars(default))
    except Exception:  # noqa: BLE001 - a class without a no-argument constructor: all fields count
        dd = {}
    explicit = {k: d[k] for k in _USER_FIELDS if k in d and d[k] is not None and (k not in dd or dd[k] != d[k])}
    backend = d.get("backend")
    if backend is not None and dd.get("backend") == backend:
        backend = None
    return explicit, backend


def check_user_quantization_config(user: Any, qcfg: QuantConfig, where: str) -> str | None:
    """Raise ConfigError when ``user`` contradicts the checkpoint's config; return its backend, if any."""
    if user is None:
        return None
    explicit, backend = _user_settings(user)
    ck = {
        "bits": qcfg.scheme.bits,
        "group_size": qcfg.scheme.group_size,
        "sym": qcfg.scheme.sym,
        "data_type": qcfg.scheme.data_type,
        "quant_method": qcfg.quant_method,
        "packing_format": qcfg.packing_format,
    }
    for k, v in explicit.items():
        theirs = ck[k]
        if k == "quant_method":
            same = _norm_method(v) == _norm_method(theirs)
        elif k == "packing_format":
            same = _norm_packing(v) == _norm_packing(theirs)
        elif k == "sym":
            same = bool(v) == bool(theirs)
        elif k in ("bits", "group_size"):
            try:
                same = int(v) == int(theirs)
            except (TypeError, ValueError):
                raise ConfigError(f"quantization_config: {k}={v!r} is not an integer") from None
        else:
            same = str(v) == str(theirs)
        if not same:
            raise ConfigError(
                f"{where}: quantization_config sets {k}={v!r} but the checkpoint was quantized with {k}={theirs!r}; "
                "the checkpoint's own config decides how it is loaded: drop the setting (or pass the matching value)"
            )
    if backend is not None and not isinstance(backend, str):
        raise ConfigError(f"quantization_config: backend must be a string, got {backend!r}")
    return backend


# ---- directory inspection -----------------------------------------------------------------------
def _read_json(p: Path) -> dict[str, Any]:
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: cannot read JSON: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: expected a JSON object, got {type(d).__name__}")
    return d


def is_quantized_dir(path: Path) -> bool:
    """Whether a model directory carries a quantization config (config.json or its own file)."""
    path = Path(path)
    cfg = path / "config.json"
    if cfg.is_file():
        try:
            if "quantization_config" in _read_json(cfg):
                return True
        except ConfigError:
            return False
    return any((path / f).is_file() for f in _QUANT_CONFIG_FILES)


def inspect_directory(path: str | os.PathLike) -> dict[str, Any]:
    """What a directory holds: ``{"kind": "pipeline"|"diffusers"|"transformers", ...}``.

    For a Diffusers model, ``class_name``; for a Transformers model, ``architectures`` and
    ``model_type``; for a pipeline, ``class_name`` and its ``components``.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: path does not exist")
    if not p.is_dir():
        raise CheckpointError(f"{p}: from_pretrained takes a model or pipeline directory, not a file")
    cfg_file, index_file = p / "config.json", p / "model_index.json"
    if index_file.is_file() and not cfg_file.is_file():
        index = _read_json(index_file)
        return {"kind": "pipeline", "class_name": index.get("_class_name"), "components": _pipeline_components(index, index_file)}
    if not cfg_file.is_file():
        raise CheckpointError(f"{p}: neither config.json (a model) nor model_index.json (a Diffusers pipeline) is there")
    cfg = _read_json(cfg_file)
    if cfg.get("_class_name"):
        return {"kind": "diffusers", "class_name": str(cfg["_class_name"]), "config": cfg}
    if cfg.get("architectures") or cfg.get("model_type"):
        return {"kind": "transformers", "architectures": list(cfg.get("architectures") or []),
                "model_type": cfg.get("model_type"), "config": cfg}
    parent_index = p.parent / "model_index.json"
    if parent_index.is_file():
        comps = _pipeline_components(_read_json(parent_index), parent_index)
        if p.name in comps:
            lib, cls = comps[p.name]
            kind = {"diffusers": "diffusers", "transformers": "transformers"}.get(lib)
            if kind is None:
                raise ConfigError(f"{parent_index}: component {p.name!r} comes from library {lib!r}; quantlinear loads diffusers and transformers models")
            return {"kind": kind, "class_name": cls, "architectures": [cls], "model_type": None, "config": cfg,
                    "from_pipeline_index": str(parent_index)}
        raise ConfigError(f"{p}/config.json has no _class_name and {parent_index} has no component named {p.name!r}")
    raise ConfigError(
        f"{p}/config.json names no model class (no _class_name, architectures or model_type) and no "
        "model_index.json beside it says which class the folder holds; pass model_class="
    )


def _pipeline_components(index: Mapping[str, Any], where: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for name, spec in index.items():
        if name.startswith("_"):
            continue
        if not isinstance(spec, (list, tuple)) or len(spec) != 2:
            continue  # pipeline options such as "requires_safety_checker": false
        lib, cls = spec
        if lib is None or cls is None:
            continue
        if not isinstance(lib, str) or not isinstance(cls, str):
            raise ConfigError(f"{where}: component {name!r} has an invalid entry {spec!r}")
        out[name] = (lib, cls)
    return out


def check_weight_files(path: Path) -> None:
    """Both ``model*.safetensors`` (AutoRound's name) and ``diffusion_pytorch_model*`` (Diffusers')
    are accepted, but not both in one folder; a Diffusers shard index must match its shards."""
    files = sorted(p.name for p in Path(path).glob("*.safetensors"))
    fams = {"diffusion_pytorch_model" if f.startswith("diffusion_pytorch_model") else "model" for f in files}
    if len(fams) > 1:
        raise CheckpointError(
            f"{path}: holds both model*.safetensors and diffusion_pytorch_model*.safetensors ({files}); "
            "which one is the checkpoint is ambiguous: remove the other"
        )
    idx = Path(path) / "diffusion_pytorch_model.safetensors.index.json"
    if idx.is_file():
        try:
            wm = json.loads(idx.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{idx}: invalid index file: {e}") from None
        for shard in sorted(set(wm.values())):
            if not (Path(path) / shard).is_file():
                raise CheckpointError(f"{idx}: shard {shard} listed in the index does not exist")
        present = set(Checkpoint(path).keys())
        for name, shard in wm.items():
            if name not in present:
                raise CheckpointError(f"{idx}: lists tensor {name!r} in {shard}, but no shard contains it")


# ---- building and loading one model -------------------------------------------------------------
def _resolve_key_mapping(model: nn.Module, path: Path, key_mapping: Any):
    """(mapping for load_quantized, its description). ``False`` disables the family registry."""
    if key_mapping is False:
        return None, None
    if key_mapping:
        return key_mapping, "user key_mapping"
    from .integrations.mappings import select_key_mapping

    keys = Checkpoint(path).keys()
    km = select_key_mapping(type(model), keys)
    if km is None:
        return None, None
    log.info("quantlinear: renaming checkpoint keys with the %r mapping (%s)", km.name, km.description)
    return km.as_dict(), f"key mapping {km.name!r} of {type(model).__name__}"


def _keep_fp32_patterns(model: nn.Module, dtype: torch.dtype) -> list[str]:
    """Module names the class keeps in float32 at ``dtype``, by each library's rule: Diffusers
    keeps ``_keep_in_fp32_modules`` for any lower dtype; Transformers only for float16, and
    ``_keep_in_fp32_modules_strict`` for float16 and bfloat16."""
    if dtype == torch.float32:
        return []
    is_transformers = any(k.__module__.startswith("transformers") for k in type(model).__mro__)
    out: list[str] = []
    keep = getattr(model, "_keep_in_fp32_modules", None)
    if keep and (not is_transformers or dtype == torch.float16):
        out.extend(str(x) for x in keep)
    strict = getattr(model, "_keep_in_fp32_modules_strict", None)
    if strict and dtype in (torch.float16, torch.bfloat16):
        out.extend(str(x) for x in strict)
    return sorted(set(out))


def _restore_fp32(model: nn.Module, path: Path, mapping: Any, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Put the float tensors of the model's ``_keep_in_fp32_modules`` back in float32, read again
    from the checkpoint (the loader cast everything to the compute dtype), as Transformers and
    Diffusers keep them."""
    patterns = _keep_fp32_patterns(model, dtype)
    if not patterns:
        return []
    qnames = {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    ckpt: Any = Checkpoint(path)
    if mapping:
        ckpt = RenamedCheckpoint(ckpt, mapping)
    restored = []
    for mname, mod in model.named_modules():
        if mname in qnames or any(mname.startswith(q + ".") for q in qnames):
            continue
        for store in (mod._parameters, mod._buffers):
            for tname, t in list(store.items()):
                if t is None or not t.dtype.is_floating_point or t.dtype == torch.float32:
                    continue
                full = f"{mname}.{tname}" if mname else tname
                if not any(p in full.split(".") for p in patterns):  # Diffusers' and Transformers' test
                    continue
                src = ckpt.get(full).to(device=device, dtype=torch.float32) if full in ckpt else t.detach().to(torch.float32)
                store[tname] = nn.Parameter(src, requires_grad=False) if store is mod._parameters else src
                restored.append(full)
    return restored


def load_into(model: nn.Module, path: Path, *, backend: str, device, dtype: torch.dtype, registry, strict: bool,
              progress, priorities, key_mapping) -> nn.Module:
    """``load_quantized`` plus the family key mapping, error context and float32-kept modules.

    ``path`` may be a ``.gguf`` file: its names are llama.cpp's, mapped by the GGUF reader itself,
    and its float tensors are read as they are (no key mapping, no float32 re-read)."""
    from .gguf_file import gguf_path

    if gguf_path(path) is not None:
        if key_mapping:
            raise QuantLinearError(f"{path}: key_mapping does not apply to a GGUF file (quantlinear maps llama.cpp's tensor names itself)")
        model = load_quantized(model, path, backend=backend, device=device, dtype=dtype, registry=registry,
                               strict=strict, progress=progress, priorities=priorities)
        model.quantlinear_report.key_mapping = None  # type: ignore[attr-defined]
        return model.eval()
    mapping, desc = _resolve_key_mapping(model, path, key_mapping)
    try:
        model = load_quantized(model, path, backend=backend, device=device, dtype=dtype, registry=registry,
                               strict=strict, progress=progress, priorities=priorities, key_mapping=mapping)
    except QuantLinearError as e:
        if desc is None:
            raise
        raise type(e)(f"{e} [checkpoint keys were renamed by the {desc}]") from e
    model.quantlinear_report.key_mapping = desc  # type: ignore[attr-defined]
    if dtype != torch.float32:
        restored = _restore_fp32(model, path, mapping, model.quantlinear_report.device, dtype)
        if restored:
            model.quantlinear_report.warnings.append(
                f"kept {len(restored)} tensors of {_keep_fp32_patterns(model, dtype)} in float32 (the model class asks for it)"
            )
    return model.eval()


def from_pretrained(
    path: str | os.PathLike,
    *,
    backend: str = "auto",
    device: Any = None,
    dtype: Any = None,
    torch_dtype: Any = None,
    registry=None,
    strict: bool = True,
    progress: bool | None = None,
    priorities: dict[str, int] | None = None,
    key_mapping: Any = None,
    model_class: Any = None,
    quantization_config: Any = None,
    subfolder: str | None = None,
    gguf_file: str | os.PathLike | None = None,
    **pipeline_kwargs: Any,
):
    """Build the right model class for a quantized checkpoint directory and load it, in one call.

    ``path`` is a Transformers model folder, a Diffusers model folder (``model.safetensors`` or
    ``diffusion_pytorch_model*.safetensors``) or a Diffusers pipeline folder (then this is
    :func:`load_pipeline` and ``pipeline_kwargs`` go to it).  ``dtype`` (alias ``torch_dtype``)
    defaults to what the library would do: Transformers' ``"auto"`` (the config's dtype),
    Diffusers' float32.  ``device`` defaults to the current accelerator (CPU without one).
    ``key_mapping``: None applies the family mapping of
    :mod:`quantlinear.integrations.mappings` when the checkpoint is in that family's foreign
    naming, ``False`` disables it, a dict / callable replaces it.  ``model_class``: a class (or
    class name) to build instead of the one the config names.  ``quantization_config``: may
    repeat the checkpoint's settings or name a ``backend``; contradicting them is an error.
    The returned model has ``quantlinear_report`` (see :func:`quantlinear.load_quantized`).

    ``gguf_file``: a llama.cpp ``.gguf`` file (a name inside ``path``, or a path) to load into the
    Transformers model that ``path``'s ``config.json`` describes (AutoRound's GGUF export writes no
    config: use the original model's folder).  A folder with a ``config.json`` without
    quantization config and exactly one ``.gguf`` file (and no safetensors) is loaded that way too.
    """
    p = Path(path)
    if subfolder:
        p = p / subfolder
    info = inspect_directory(p)
    gguf = _gguf_checkpoint(p, info, gguf_file)
    if gguf is not None:
        if quantization_config is not None or pipeline_kwargs:
            extra = "quantization_config" if quantization_config is not None else sorted(pipeline_kwargs)
            raise QuantLinearError(f"{gguf}: a GGUF file carries its own quantization and names; {extra} does not apply")
        from .integrations import transformers as tintegration

        return tintegration.load_model(p, info, dtype=resolve_dtype(dtype, torch_dtype), model_class=model_class, backend=backend,
                                       device=_norm_device(device), registry=registry, strict=strict, progress=progress,
                                       priorities=priorities, key_mapping=key_mapping, checkpoint=gguf)
    if info["kind"] == "pipeline":
        if model_class is not None or key_mapping is not None:
            raise QuantLinearError(f"{p} is a pipeline: model_class= and key_mapping= apply to single models (load the component folder instead)")
        from .integrations.diffusers import load_pipeline as _load_pipeline

        return _load_pipeline(p, backend=backend, device=device, dtype=dtype, torch_dtype=torch_dtype, registry=registry,
                              strict=strict, progress=progress, priorities=priorities,
                              quantization_config=quantization_config, **pipeline_kwargs)
    if pipeline_kwargs:
        raise QuantLinearError(f"from_pretrained({p}): unexpected keyword arguments {sorted(pipeline_kwargs)} for a single model")
    dt = resolve_dtype(dtype, torch_dtype)
    dev = _norm_device(device)
    if not is_quantized_dir(p):
        raise ConfigError(f"{p}: no quantization config (config.json:quantization_config, quantization_config.json); "
                          "load unquantized models with their own library")
    qcfg, _ = read_quant_config(p)
    user_backend = check_user_quantization_config(quantization_config, qcfg, str(p))
    if user_backend is not None:
        if backend not in ("auto", user_backend):
            raise ConfigError(f"backend={backend!r} and quantization_config backend={user_backend!r} disagree")
        backend = user_backend if user_backend != "auto" else backend
    check_weight_files(p)
    kind = info["kind"]
    if model_class is not None:
        kind = _kind_of_class(model_class, kind)
    common = dict(backend=backend, device=dev, registry=registry, strict=strict, progress=progress,
                  priorities=priorities, key_mapping=key_mapping)
    if kind == "diffusers":
        from .integrations import diffusers as integ
    else:
        from .integrations import transformers as integ  # type: ignore[no-redef]
    return integ.load_model(p, info, dtype=dt, model_class=model_class, **common)


def _gguf_checkpoint(p: Path, info: dict[str, Any], gguf_file: Any) -> Path | None:
    """The .gguf file to load into the Transformers model of folder ``p``, or None (not GGUF)."""
    from .gguf_file import gguf_path

    if gguf_file is None:
        if info["kind"] != "transformers" or is_quantized_dir(p):
            return None
        found = gguf_path(p)
        if found is None:
            return None
    else:
        found = Path(gguf_file) if Path(gguf_file).is_absolute() else p / gguf_file
        if not found.is_file():
            raise CheckpointError(f"gguf_file={str(gguf_file)!r}: {found} does not exist")
        if found.suffix != ".gguf":
            raise CheckpointError(f"gguf_file={str(gguf_file)!r}: not a .gguf file")
    if info["kind"] != "transformers":
        raise ConfigError(f"{p}: a GGUF file loads into a Transformers model; this folder holds a {info['kind']} {info.get('class_name')}")
    return found


def _kind_of_class(model_class: Any, default: str) -> str:
    if isinstance(model_class, str):
        return default
    mods = [k.__module__ for k in getattr(model_class, "__mro__", ())]
    if any(m.startswith("diffusers") for m in mods):
        return "diffusers"
    if any(m.startswith("transformers") for m in mods):
        return "transformers"
    if not (isinstance(model_class, type) and issubclass(model_class, nn.Module)):
        raise QuantLinearError(f"model_class must be a torch.nn.Module subclass or a class name, got {model_class!r}")
    return default


def load_pipeline(path: str | os.PathLike, **kwargs: Any):
    """Load a Diffusers pipeline whose components are partly quantized; see
    :func:`quantlinear.integrations.diffusers.load_pipeline`."""
    from .integrations.diffusers import load_pipeline as _load_pipeline

    return _load_pipeline(path, **kwargs)

