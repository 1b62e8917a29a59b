"""Diffusers models and pipelines in one call.

A quantized Diffusers model folder (``FluxTransformer2DModel``, ``ZImageTransformer2DModel``,
``WanTransformer3DModel``, ``QwenImageTransformer2DModel`` ...) may hold the weights as
``diffusion_pytorch_model*.safetensors`` (Diffusers' name) or ``model.safetensors`` (what
AutoRound's pipeline and model-free exports write); its class is ``_class_name`` in
``config.json`` or, for AutoRound's pipeline export (whose ``config.json`` has no
``_class_name``), the folder's entry in the pipeline's ``model_index.json``.

What AutoRound's exports need and quantlinear does (``/work/shared/notes/diffusers-autoround.md``):
layers packed outside ``block_name_to_quantize`` (the model-free route packs ``norm_out.linear``
and ``proj_out`` of Flux) load as quantized because the tensors say so; layers with fewer inputs
than a group, or a partial last group, load whether stored exactly or padded to whole groups;
the checkpoint's own bits / group size / symmetry are used, never a default.

:func:`load_pipeline` loads a pipeline where only some components are quantized: those through
quantlinear, the rest through Diffusers' own ``from_pretrained``; ``dtype`` applies to every
component, ``device`` (one device, or a dict component -> device) places them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ConfigError, QuantLinearError
from ..pretrained import (
    _norm_device,
    _pipeline_components,
    _read_json,
    inspect_directory,
    is_quantized_dir,
    load_into,
    require,
    resolve_dtype,
)
from ..skeleton import skeleton

__all__ = ["load_model", "load_pipeline", "model_class_for"]

#: config.json keys that are bookkeeping, not constructor arguments
_NON_INIT_KEYS = ("quantization_config", "_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


def model_class_for(class_name: Any):
    """The Diffusers model class named ``class_name`` (or ``class_name`` itself when it is a class)."""
    diffusers = require("diffusers", "loading a Diffusers model")
    if not isinstance(class_name, str):
        cls = class_name
    else:
        cls = getattr(diffusers, class_name, None)
        if cls is None:
            raise ConfigError(f"diffusers {diffusers.__version__} has no model class {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise ConfigError(f"{getattr(cls, '__name__', cls)!r} is not a Diffusers model class (ModelMixin)")
    return cls


def load_model(path: Path, info: dict[str, Any], *, dtype, model_class=None, backend, device, registry, strict,
               progress, priorities, key_mapping):
    cls = model_class_for(model_class if model_class is not None else info.get("class_name"))
    cfg = dict(info.get("config") or _read_json(path / "config.json"))
    if dtype is None or dtype == "auto":
        dtype = torch.float32  # Diffusers' default (torch_dtype=None)
    init = {k: v for k, v in cfg.items() if k not in _NON_INIT_KEYS}
    try:
        with skeleton():
            model = cls.from_config(init)
    except QuantLinearError:
        raise
    except Exception as e:  # noqa: BLE001 - a config that does not fit the class
        raise ConfigError(f"{path}: cannot build {cls.__name__} from config.json: {type(e).__name__}: {e}") from None
    model = load_into(model, path, backend=backend, device=device, dtype=dtype, registry=registry, strict=strict,
                      progress=progress, priorities=priorities, key_mapping=key_mapping)
    return model


def _device_for(device: Any, name: str):
    if isinstance(device, Mapping):
        dev = device.get(name)
        return _norm_device(dev, f"device[{name!r}]") if dev is not None else None
    return _norm_device(device)


def load_pipeline(
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
    quantization_config: Any = None,
    components: Mapping[str, Any] | None = None,
    **diffusers_kwargs: Any,
):
    """Load a Diffusers pipeline folder whose quantized components load through quantlinear.

    Every component folder with a quantization config is loaded by
    :func:`quantlinear.from_pretrained` (its class from ``model_index.json``); the others, and
    the pipeline itself, by ``DiffusionPipeline.from_pretrained`` with ``dtype`` and
    ``diffusers_kwargs``.  ``dtype`` (alias ``torch_dtype``) applies to every component.
    ``components`` passes ready components by name (loaded by neither).  ``device``: one device
    for all components (default: the current accelerator, else CPU), or ``{component: device}``
    (components not named stay where Diffusers loaded them: CPU).  ``quantization_config`` is
    checked against every quantized component's own config.  The pipeline gets ``quantlinear_reports``
    (component -> :class:`~quantlinear.LoadReport`).
    """
    diffusers = require("diffusers", "loading a Diffusers pipeline")
    p = Path(path)
    info = inspect_directory(p)
    if info["kind"] != "pipeline":
        raise ConfigError(f"{p}: not a Diffusers pipeline folder (no model_index.json, or it has a config.json)")
    dt = resolve_dtype(dtype, torch_dtype)
    if device is None:  # one place for every component: the accelerator, as load_quantized defaults
        from ..devices import default_device

        device = default_device()
    if isinstance(device, Mapping):
        comps = _pipeline_components(_read_json(p / "model_index.json"), p / "model_index.json")
        unknown = sorted(set(device) - set(comps))
        if unknown:
            raise QuantLinearError(f"device: {unknown} are not components of {p} (components: {sorted(comps)})")
    given = dict(components or {})
    from ..pretrained import from_pretrained

    loaded: dict[str, Any] = {}
    for name, (lib, cls_name) in info["components"].items():
        if name in given:
            continue
        sub = p / name
        if not sub.is_dir() or not is_quantized_dir(sub):
            continue
        if lib == "diffusers":
            cls: Any = model_class_for(cls_name)
        elif lib == "transformers":
            cls = cls_name
        else:
            raise ConfigError(f"{p}/model_index.json: quantized component {name!r} comes from {lib!r}; quantlinear loads diffusers and transformers models")
        comp_dtype = dt if isinstance(dt, torch.dtype) else None
        loaded[name] = from_pretrained(
            sub, backend=backend, device=_device_for(device, name), dtype=comp_dtype, registry=registry,
            strict=strict, progress=progress, priorities=priorities, model_class=cls,
            quantization_config=quantization_config,
        )
    if not loaded and not given:
        raise ConfigError(f"{p}: no component of the pipeline is quantized (no component folder has a quantization config)")
    # components saved as [null, null] (a pipeline exported without its text encoders, say)
    # must be passed as None, or Diffusers refuses to build the pipeline
    index = _read_json(p / "model_index.json")
    for name, spec in index.items():
        if (not name.startswith("_") and isinstance(spec, (list, tuple)) and len(spec) == 2
                and spec[0] is None and spec[1] is None and name not in given):
            given[name] = None
    kw = dict(diffusers_kwargs)
    if isinstance(dt, torch.dtype):
        kw["dtype"] = dt
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(str(p), **given, **loaded, **kw)
    except QuantLinearError:
        raise
    except Exception as e:  # noqa: BLE001 - surface Diffusers' reason with the folder named
        raise QuantLinearError(f"{p}: Diffusers could not assemble the pipeline: {type(e).__name__}: {e}") from e
    for name, comp in pipe.components.items():
        if name in loaded or name in given or not isinstance(comp, nn.Module):
            continue
        dev = _device_for(device, name)
        if dev is not None:
            comp.to(dev)
    pipe.quantlinear_reports = {n: m.quantlinear_report for n, m in loaded.items()}
    return pipe
