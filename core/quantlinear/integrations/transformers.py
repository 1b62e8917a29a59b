"""Transformers models (causal LMs, the language-model stage of omni models, ...) in one call.

The class comes from ``config.json``: ``architectures[0]`` when Transformers has that class,
else the ``AutoModelForCausalLM`` / ``AutoModel`` class of ``model_type``; ``model_class=`` (a
class or a class name) overrides it.  The config is read with ``AutoConfig`` (its
``quantization_config`` removed: quantlinear, not Transformers' quantizer, handles it), the
model is built by ``_from_config`` on a :func:`quantlinear.skeleton` and filled by
:func:`quantlinear.load_quantized`.

Omni models: the thinker (``Qwen2_5OmniThinkerForConditionalGeneration``) is a Transformers
model of its own; its Hub checkpoints name modules ``thinker.model.layers.*`` while
Transformers 5 has ``model.language_model.layers.*`` — the family mapping of
:mod:`quantlinear.integrations.mappings` renames them.  Layers that the checkpoint keeps in
float (lm_head, MoE gates, the vision and audio towers: ``bits: 16`` entries,
``modules_to_not_convert``, or simply stored as float weights) load as float.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, QuantLinearError
from ..pretrained import _dtype_from_config, load_into, require
from ..skeleton import skeleton

__all__ = ["load_model", "model_class_for"]


def model_class_for(config, model_class: Any = None):
    """The Transformers class to build for ``config`` (or ``model_class``, a class or its name)."""
    transformers = require("transformers", "loading a Transformers model")
    if model_class is not None and not isinstance(model_class, str):
        return model_class
    names = [model_class] if isinstance(model_class, str) else list(getattr(config, "architectures", None) or [])
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    if isinstance(model_class, str):
        raise ConfigError(f"model_class={model_class!r} is not a class of transformers {transformers.__version__}")
    for auto in ("AutoModelForCausalLM", "AutoModel"):
        mapping = getattr(transformers, auto)._model_mapping
        try:
            return mapping[type(config)]
        except KeyError:
            continue
    raise ConfigError(
        f"config.json names architectures={names} and model_type={getattr(config, 'model_type', None)!r}, "
        f"for which transformers {transformers.__version__} has no model class; pass model_class="
    )


def load_model(path: Path, info: dict[str, Any], *, dtype, model_class=None, backend, device, registry, strict,
               progress, priorities, key_mapping, checkpoint: Path | None = None):
    """Build the model of ``path``'s config.json and load ``checkpoint`` (default: ``path``; a .gguf file for GGUF)."""
    transformers = require("transformers", "loading a Transformers model")
    try:
        config = transformers.AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{path}/config.json: Transformers cannot read it: {e}") from None
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    cls = model_class_for(config, model_class)
    # A stage of a multi-stage model (the thinker of a full Qwen2.5-Omni checkpoint) is built
    # from that stage's sub-config; the family key mapping drops the other stages' tensors.
    stage = cls.__name__.endswith("ThinkerForConditionalGeneration") and getattr(config, "thinker_config", None)
    if stage is not None and stage is not False:
        config = stage
    if dtype is None or dtype == "auto":  # Transformers 5 default: the dtype the config names
        dtype = _dtype_from_config(info.get("config") or {})
    builder = getattr(cls, "_from_config", None)
    try:
        with skeleton():
            model = builder(config, dtype=dtype) if builder is not None else cls(config)
    except QuantLinearError:
        raise
    except Exception as e:  # noqa: BLE001 - a config that does not fit the class
        raise ConfigError(f"{path}: cannot build {cls.__name__} from config.json: {type(e).__name__}: {e}") from None
    model = load_into(model, checkpoint or path, backend=backend, device=device, dtype=dtype, registry=registry, strict=strict,
                      progress=progress, priorities=priorities, key_mapping=key_mapping)
    gen = path / "generation_config.json"
    if gen.is_file() and hasattr(model, "generation_config"):
        try:
            model.generation_config = transformers.GenerationConfig.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            model.quantlinear_report.warnings.append(f"generation_config.json not loaded: {e}")
    return model
