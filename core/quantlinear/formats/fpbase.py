"""Shared machinery of the floating-point / microscaling checkpoint layouts (mx.py, nvfp.py, fp8.py)."""

from __future__ import annotations

from typing import ClassVar, Mapping

import torch

from .. import fpcodes
from ..errors import CheckpointError, QuantLinearError
from ..spec import LayerSpec
from .base import FloatWeights, PackingFormat


class FloatFormat(PackingFormat):
    """Base of the float layouts: value checks that name the layer, the tensor and the value."""

    #: element kind of the codes (fpcodes)
    element: ClassVar[str]
    #: scale group the format is defined for (0: one per row or per tensor, decided by the scheme)
    block: ClassVar[int] = 0
    #: bits of Scheme this layout holds
    layout_bits: ClassVar[int]

    def check_shape(self, spec: LayerSpec) -> str | None:
        s = spec.scheme
        if s.data_type not in self.data_types:
            return f"format {self.name} holds data_type {'/'.join(sorted(self.data_types))}, not {s.data_type}"
        if s.bits != self.layout_bits:
            return f"format {self.name} holds {self.layout_bits}-bit elements, not bits={s.bits}"
        if self.block:
            if s.group_size != self.block:
                return f"format {self.name} needs group_size {self.block}, got {s.group_size}"
            if spec.in_features % self.block:
                return f"in_features={spec.in_features} is not a multiple of the scale block {self.block} (format {self.name})"
        return None

    def infer_features(self, shapes: Mapping[str, tuple[int, ...]], bits: int) -> tuple[int, int]:
        """4-bit layouts store two codes per byte in ``weight_packed [N, K/2]``; 8-bit ones ``weight [N, K]``."""
        if "weight_packed" in shapes:
            n, half_k = shapes["weight_packed"]
            return half_k * 2, n
        n, k = shapes["weight"]
        return k, n

    # -- helpers for unpack/pack ---------------------------------------------------------------------
    @staticmethod
    def where(spec: LayerSpec, tname: str) -> str:
        return f"layer {spec.name or '<layer>'!r}: tensor {spec.name or '<layer>'}.{tname}"

    def check_finite(self, t: torch.Tensor, spec: LayerSpec, tname: str, *, positive: bool = False) -> None:
        f = t.to(torch.float32)
        bad = ~torch.isfinite(f)
        if positive:
            bad |= f <= 0
        if bool(bad.any()):
            idx = tuple(int(i) for i in bad.nonzero()[0])
            raise CheckpointError(
                f"{self.where(spec, tname)} holds {float(f[idx])!r} at index {idx}; expected "
                f"{'finite positive' if positive else 'finite'} values (format {self.name})"
            )

    def check_fp8_codes(self, t: torch.Tensor, spec: LayerSpec, tname: str) -> None:
        """No NaN bytes in a float8 tensor."""
        u = t.view(torch.uint8)
        nan = torch.isnan(t.to(torch.float32))
        if bool(nan.any()):
            idx = tuple(int(i) for i in nan.nonzero()[0])
            raise CheckpointError(f"{self.where(spec, tname)} holds a NaN byte 0x{int(u[idx]):02x} at index {idx} (format {self.name})")

    def decode_e8m0_checked(self, s: torch.Tensor, spec: LayerSpec, tname: str) -> torch.Tensor:
        nan = s == fpcodes.E8M0_NAN
        if bool(nan.any()):
            idx = tuple(int(i) for i in nan.nonzero()[0])
            raise CheckpointError(f"{self.where(spec, tname)} holds the E8M0 NaN code 255 at index {idx} (format {self.name})")
        return fpcodes.decode_e8m0(s)

    def codes_for_pack(self, w: FloatWeights, spec: LayerSpec) -> torch.Tensor:
        if w.element != self.element:
            raise QuantLinearError(f"layer {spec.name!r}: format {self.name} stores {self.element} elements, got {w.element}")
        N, K = spec.out_features, spec.in_features
        if tuple(w.codes.shape) != (N, K) or w.codes.dtype != torch.uint8:
            raise QuantLinearError(
                f"layer {spec.name!r}: codes must be uint8 {(N, K)}, got {w.codes.dtype} {tuple(w.codes.shape)}"
            )
        return w.codes

    def raw_scales_for_pack(self, w: FloatWeights, spec: LayerSpec, kind: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The stored scale tensor: ``w.raw_scales`` when it is of this kind, else encoded (exactly) from ``w.scales``."""
        if w.raw_scales is not None and w.scale_kind == kind and tuple(w.raw_scales.shape) == shape:
            return w.raw_scales.contiguous()
        if kind == "e8m0":
            return fpcodes.encode_e8m0(w.scales).reshape(shape).contiguous()
        if kind == "e4m3":
            raw = w.scales.to(torch.float8_e4m3fn)
            if not torch.equal(raw.to(torch.float32), w.scales.to(torch.float32)):
                raise QuantLinearError(f"layer {spec.name!r}: block scales are not exactly representable as float8_e4m3fn")
            return raw.reshape(shape).contiguous()
        raise QuantLinearError(f"layer {spec.name!r}: cannot encode scales of kind {kind!r}")


def require(tensors: Mapping[str, torch.Tensor], spec: LayerSpec, fmt: str, *names: str) -> list[torch.Tensor]:
    out = []
    for n in names:
        if n not in tensors:
            raise CheckpointError(f"layer {spec.name!r}: tensor {n!r} is missing (format {fmt})")
        out.append(tensors[n])
    return out
