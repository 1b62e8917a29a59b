"""Checkpoint packing formats, by canonical name, and how config strings map onto them.

Config spellings are translated here, at the edge; everything past this module sees only
the canonical names ``gptq``, ``gptq_v2`` and ``awq``.
"""

from __future__ import annotations

from ..errors import UnsupportedSchemeError
from .awq import AWQFormat
from .base import IntWeights, PackingFormat, TensorSpec
from .gptq import GPTQFormat, GPTQv2Format

FORMATS: dict[str, PackingFormat] = {f.name: f for f in (GPTQFormat(), GPTQv2Format(), AWQFormat())}

#: AutoRound ``packing_format`` strings (``auto_round/inference/backend.py``) for int schemes.
AUTOROUND_PACKING = {
    "auto_round:auto_gptq": "gptq",  # zeros - 1 ("GPTQ_FORMAT", comment "zp+-1")
    "auto_round:gptq": "gptq",
    "auto": "gptq",
    "auto_round": "gptq_v2",  # native packing, raw zeros ("GPTQ_FORMAT_NO_ZP")
    "auto_round:gptqmodel": "gptq_v2",
    "auto_round:auto_awq": "awq",
    "auto_round:awq": "awq",
}


def get_format(name: str) -> PackingFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise UnsupportedSchemeError(f"unknown packing format {name!r}; known: {sorted(FORMATS)}") from None


__all__ = ["FORMATS", "AUTOROUND_PACKING", "IntWeights", "PackingFormat", "TensorSpec", "get_format"]
