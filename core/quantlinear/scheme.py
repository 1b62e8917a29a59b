"""Quantization schemes as frozen, hashable data.

A :class:`Scheme` says *what* numbers a layer stores (weight data type, bits, group size,
symmetry, scale type) and whether activations are quantized too.  It says nothing about how
the numbers are laid out in a file (that is a packing format, see ``quantlinear.formats``)
nor about which kernel runs it.  Schemes key caches and cross custom-op boundaries, so they
are immutable and have a stable canonical string (:attr:`Scheme.id`).

Presets carry AutoRound's names and values (``auto_round/schemes.py``, ``PRESET_SCHEMES``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from .errors import UnsupportedSchemeError

#: Weight data types quantlinear knows, with the bits each allows.
WEIGHT_DATA_TYPES: dict[str, tuple[int, ...]] = {
    "int": (2, 3, 4, 5, 6, 7, 8),
    "fp": (8,),  # FP8 E4M3 / E5M2 (FPW8A16, FP8_STATIC, FP8_BLOCK)
    "mx_fp": (4, 6, 8),  # OCP microscaling, E8M0 shared exponent per 32
    "mx_fp_rceil": (4, 6, 8),  # same encoding, round-up-ceil scale rounding at quantize time
    "mx_int": (4,),
    "nv_fp": (4,),  # NVFP4: E2M1 + E4M3 scale per 16 + global scale
    "nvfp4_v2": (4,),  # NVFP4 with E5M3 scales, no global scale
    "gguf": (2, 3, 4, 5, 6, 8),  # llama.cpp block types; the packing format names the type (quantlinear.gguf_types)
}

#: Activation data types that may appear in a config (None/16 bits = not quantized).
ACT_DATA_TYPES = {"int", "fp", "mx_fp", "mx_fp_rceil", "mx_int", "nv_fp", "nv_fp4_with_static_gs", "nvfp4_v2"}

_ALIASES = {
    "float": "fp",
    "fp8": "fp",
    "fp8_e4m3": "fp",
    "fp8_e4m3fn": "fp",
    "int_sym": "int",
    "int_asym": "int",
    "mx_fp4": "mx_fp",
    "mx_fp8": "mx_fp",
    "mxfp": "mx_fp",
    "nv_fp4": "nv_fp",
    "nvfp": "nv_fp",
    "mx_int4": "mx_int",
}


def normalize_data_type(value: str | None, *, what: str = "data_type") -> str:
    """Map the spellings found in real configs onto quantlinear's canonical names."""
    if value is None:
        return "int"
    v = str(value).lower()
    v = _ALIASES.get(v, v)
    if v not in WEIGHT_DATA_TYPES:
        raise UnsupportedSchemeError(
            f"{what}={value!r} is not a known weight data type; known: {sorted(WEIGHT_DATA_TYPES)}"
        )
    return v


@dataclass(frozen=True)
class Scheme:
    """What a quantized layer stores.

    ``group_size``: ``-1`` = one group per output channel (spanning all of K), ``0`` = one
    group for the whole tensor, a positive int = groups of that many input channels, a
    ``(rows, cols)`` tuple = 2-D blocks (FP8_BLOCK).
    """

    bits: int = 4
    group_size: int | tuple[int, int] = 128
    sym: bool = True
    data_type: str = "int"
    act_bits: int = 16
    act_data_type: str | None = None
    act_group_size: int | None = None
    act_sym: bool | None = None
    act_dynamic: bool | None = None
    scale_dtype: str | None = None

    def __post_init__(self) -> None:
        dt = normalize_data_type(self.data_type)
        object.__setattr__(self, "data_type", dt)
        if isinstance(self.group_size, list):
            object.__setattr__(self, "group_size", tuple(self.group_size))
        if not isinstance(self.bits, int) or isinstance(self.bits, bool):
            raise UnsupportedSchemeError(f"bits must be an int, got {self.bits!r}")
        if self.bits not in WEIGHT_DATA_TYPES[dt]:
            raise UnsupportedSchemeError(
                f"bits={self.bits} is not supported for data_type={dt!r}; "
                f"supported: {list(WEIGHT_DATA_TYPES[dt])}"
            )
        gs = self.group_size
        if isinstance(gs, tuple):
            if len(gs) != 2 or not all(isinstance(g, int) and g > 0 for g in gs):
                raise UnsupportedSchemeError(f"a 2-D group_size must be two positive ints, got {gs!r}")
        elif not isinstance(gs, int) or isinstance(gs, bool) or gs < -1:
            raise UnsupportedSchemeError(f"group_size must be -1, 0 or a positive int, got {gs!r}")
        act_bits = 16 if self.act_bits is None else int(self.act_bits)
        if act_bits >= 16:
            # Weight-only: the act_* fields carry no meaning; canonicalize so equal schemes compare equal.
            object.__setattr__(self, "act_bits", 16)
            for f in ("act_data_type", "act_group_size", "act_sym", "act_dynamic"):
                object.__setattr__(self, f, None)
        else:
            object.__setattr__(self, "act_bits", act_bits)
            if self.act_data_type is not None and str(self.act_data_type) not in ACT_DATA_TYPES:
                raise UnsupportedSchemeError(f"act_data_type={self.act_data_type!r} is not known")

    # -- derived facts -------------------------------------------------------------------
    @property
    def weight_only(self) -> bool:
        return self.act_bits >= 16

    @property
    def is_int(self) -> bool:
        return self.data_type == "int"

    def group_size_for(self, in_features: int) -> int:
        """The effective number of input channels per group for a layer of this width."""
        gs = self.group_size
        if isinstance(gs, tuple):
            return gs[1]
        if gs in (-1, 0):
            return in_features
        return gs

    def num_groups(self, in_features: int) -> int:
        g = self.group_size_for(in_features)
        return -(-in_features // g)

    @property
    def id(self) -> str:
        """A stable canonical string, e.g. ``int4_g128_sym`` or ``mx_fp4_g32_a8``."""
        gs = self.group_size
        g = "x".join(map(str, gs)) if isinstance(gs, tuple) else ("ch" if gs == -1 else ("t" if gs == 0 else str(gs)))
        s = f"{self.data_type}{self.bits}_g{g}_{'sym' if self.sym else 'asym'}"
        if not self.weight_only:
            s += f"_a{self.act_bits}{self.act_data_type or ''}"
        return s

    def __str__(self) -> str:
        name = preset_name(self)
        return f"{name} ({self.id})" if name else self.id

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(d["group_size"], tuple):
            d["group_size"] = list(d["group_size"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: "Scheme | None" = None) -> "Scheme":
        """Build from a config mapping; unknown keys are ignored, missing ones come from ``base``."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: d[k] for k in names if k in d and d[k] is not None}
        if "act_bits" in d and d["act_bits"] is None:
            kwargs["act_bits"] = 16
        if base is None:
            return cls(**kwargs)
        return replace(base, **kwargs)


PRESETS: dict[str, Scheme] = {
    "W2A16": Scheme(bits=2, group_size=128),
    "W2A16G64": Scheme(bits=2, group_size=64),
    "W2A16G32": Scheme(bits=2, group_size=32),
    "W3A16": Scheme(bits=3, group_size=128),
    "W4A16": Scheme(bits=4, group_size=128),
    "W5A16": Scheme(bits=5, group_size=128),
    "W6A16": Scheme(bits=6, group_size=128),
    "W8A16": Scheme(bits=8, group_size=128),
    "MXFP4": Scheme(4, 32, True, "mx_fp", 4, "mx_fp", 32, True, True),
    "MXFP4_RCEIL": Scheme(4, 32, True, "mx_fp", 4, "mx_fp_rceil", 32, True, True),
    "MXFP8": Scheme(8, 32, True, "mx_fp", 8, "mx_fp", 32, True, True),
    "MXFP8_RCEIL": Scheme(8, 32, True, "mx_fp", 8, "mx_fp_rceil", 32, True, True),
    "MXINT4": Scheme(4, 32, True, "mx_int", 4, "mx_int", 32, True, True),
    "NVFP4": Scheme(4, 16, True, "nv_fp", 4, "nv_fp4_with_static_gs", 16, True, True),
    "NVFP4_E5M3": Scheme(4, 16, True, "nvfp4_v2", 4, "nvfp4_v2", 16, True, None),
    "FPW8A16": Scheme(bits=8, group_size=0, sym=True, data_type="fp"),
    "FP8_STATIC": Scheme(8, -1, True, "fp", 8, "fp", 0, True, False),
    "FP8_BLOCK": Scheme(8, (128, 128), True, "fp", 8, "fp", 128, True, True),
}


def preset_name(scheme: Scheme) -> str | None:
    for name, s in PRESETS.items():
        if s == scheme:
            return name
    return None


def get_scheme(name_or_scheme: "str | Scheme | Mapping[str, Any]") -> Scheme:
    """Resolve a preset name (case-insensitive), a Scheme, or a dict into a Scheme."""
    if isinstance(name_or_scheme, Scheme):
        return name_or_scheme
    if isinstance(name_or_scheme, Mapping):
        return Scheme.from_dict(name_or_scheme)
    key = str(name_or_scheme).upper()
    if key not in PRESETS:
        raise UnsupportedSchemeError(f"unknown scheme {name_or_scheme!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[key]
