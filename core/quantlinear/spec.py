"""What a kernel is asked to implement: one layer, described without any config dict."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .scheme import Scheme


@dataclass(frozen=True)
class LayerSpec:
    """One quantized linear layer as kernels see it.

    ``format`` is the canonical packing-format name of the checkpoint tensors
    (``quantlinear.formats``); ``dtype`` is the activation/compute dtype; ``act_order`` is
    True when the checkpoint carries a ``g_idx`` that is not the trivial ``k // group_size``.
    """

    scheme: Scheme
    format: str
    in_features: int
    out_features: int
    bias: bool = False
    dtype: torch.dtype = torch.float16
    device: torch.device = torch.device("cpu")
    act_order: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))

    @property
    def group_size(self) -> int:
        """Effective input channels per group (``-1``/``0`` resolved to ``in_features``)."""
        return self.scheme.group_size_for(self.in_features)

    @property
    def num_groups(self) -> int:
        return self.scheme.num_groups(self.in_features)

    def key(self) -> "LayerSpec":
        """The spec without its layer name: what selection results are cached on."""
        return replace(self, name="")

    def describe(self) -> str:
        return (
            f"{self.name or '<layer>'}: {self.scheme.id} {self.format} "
            f"K={self.in_features} N={self.out_features} bias={self.bias} "
            f"{str(self.dtype).replace('torch.', '')} on {self.device}"
        )
