"""quantlinear: run weight-quantized models (AutoRound, GPTQ, AWQ) fast on any accelerator.

The core knows schemes, checkpoint formats, the :class:`QuantLinear` contract, loading and
kernel selection; device kernels come from plugins (``pip install quantlinear[cuda]``, ...).
Importing this package imports no plugin.
"""

from __future__ import annotations

from .config import QuantConfig, parse_quantization_config, read_quant_config
from .errors import (
    CheckpointError,
    ConfigError,
    NoKernelError,
    PluginError,
    QuantLinearError,
    UnknownBackendError,
    UnsupportedSchemeError,
)
from .formats import FloatWeights, GGUFWeights, IntWeights
from .hookspecs import PLUGIN_API_VERSION, hookimpl
from .loader import LoadReport, load_quantized
from .pretrained import from_pretrained, load_pipeline
from .qlinear import QuantLinear
from .quantize import quantize, quantize_weight, save_quantized
from .registry import Registry, registry
from .scheme import PRESETS, Scheme, get_scheme
from .select import Selection, explain, select_kernel
from .skeleton import skeleton
from .spec import LayerSpec
from .verdict import Verdict

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "FloatWeights",
    "GGUFWeights",
    "IntWeights",
    "LayerSpec",
    "LoadReport",
    "NoKernelError",
    "PLUGIN_API_VERSION",
    "PRESETS",
    "PluginError",
    "QuantConfig",
    "QuantLinear",
    "QuantLinearError",
    "Registry",
    "Scheme",
    "Selection",
    "UnknownBackendError",
    "UnsupportedSchemeError",
    "Verdict",
    "explain",
    "from_pretrained",
    "load_pipeline",
    "get_scheme",
    "hookimpl",
    "load_quantized",
    "parse_quantization_config",
    "quantize",
    "quantize_weight",
    "read_quant_config",
    "registry",
    "save_quantized",
    "select_kernel",
    "skeleton",
]
