"""Every error quantlinear raises on bad input derives from :class:`QuantLinearError`.

Messages name the layer, the tensor and the offending value, so a user reading a
traceback from a 70B-parameter load knows which of thousands of tensors is wrong.
"""

from __future__ import annotations


class QuantLinearError(Exception):
    """Base class of every error quantlinear raises on bad input or a failed choice."""


class ConfigError(QuantLinearError, ValueError):
    """The quantization config (config.json / quantization_config.json) is invalid."""


class CheckpointError(QuantLinearError, ValueError):
    """A checkpoint file is missing, corrupt, or holds tensors of the wrong name/shape/dtype."""


class UnsupportedSchemeError(QuantLinearError, ValueError):
    """A scheme or packing format that quantlinear does not know."""


class NoKernelError(QuantLinearError, RuntimeError):
    """No installed kernel can run a layer; the message lists every candidate's reason."""


class UnknownBackendError(QuantLinearError, ValueError):
    """`backend=` names neither "auto", a plugin, nor a kernel."""


class PluginError(QuantLinearError, RuntimeError):
    """A plugin could not be loaded or returned something that is not a kernel."""
