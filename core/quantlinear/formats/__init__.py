"""Checkpoint packing formats, by canonical name, and how config strings map onto them.

Config spellings are translated here, at the edge; everything past this module sees only
the canonical names ``gptq``, ``gptq_v2`` and ``awq`` (int, ``IntWeights``), ``mxfp4``,
``mxfp8``, ``mxint4``, ``nvfp4`` and ``fp8`` (floating point, ``FloatWeights``) and
``gguf_q4_0`` ... ``gguf_q6_k`` (llama.cpp blocks, ``GGUFWeights``; one per type of
:mod:`quantlinear.gguf_types`, read from ``.gguf`` files by :mod:`quantlinear.gguf_file`).
"""

from __future__ import annotations

from ..errors import UnsupportedSchemeError
from .awq import AWQFormat
from .base import FloatWeights, GGUFWeights, IntWeights, PackingFormat, TensorSpec
from .fp8 import FP8Format
from .gguf import GGUF_FORMATS
from .gptq import GPTQFormat, GPTQv2Format
from .mx import MXFP4Format, MXFP8Format, MXINT4Format
from .nvfp import NVFP4Format

FORMATS: dict[str, PackingFormat] = {f.name: f for f in (GPTQFormat(), GPTQv2Format(), AWQFormat())}
#: floating-point / microscaling layouts (``FloatWeights``)
FLOAT_FORMATS: dict[str, PackingFormat] = {f.name: f for f in (MXFP4Format(), MXFP8Format(), MXINT4Format(), NVFP4Format(), FP8Format())}
FORMATS.update(FLOAT_FORMATS)
FORMATS.update(GGUF_FORMATS)

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


#: (AutoRound ``packing_format`` or None when absent, data_type, bits) -> float format
AUTOROUND_FLOAT_PACKING = {
    ("auto_round:llm_compressor", "mx_fp", 4): "mxfp4",
    ("auto_round:llm_compressor", "mx_fp_rceil", 4): "mxfp4",
    ("auto_round:llm_compressor", "mx_fp", 8): "mxfp8",
    ("auto_round:llm_compressor", "mx_fp_rceil", 8): "mxfp8",
    ("auto_round", "mx_int", 4): "mxint4",
    ("auto_round:llm_compressor", "nv_fp", 4): "nvfp4",
    ("auto_round:fp8_static", "fp", 8): "fp8",
    (None, "fp", 8): "fp8",  # FPW8A16: written without a packing_format
}


def float_format_for(data_type: str, bits: int, packing_format: str | None) -> str | None:
    """The float layout AutoRound writes for this data type / bits / packing_format, or None."""
    return AUTOROUND_FLOAT_PACKING.get((packing_format, data_type, bits))


def get_format(name: str) -> PackingFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise UnsupportedSchemeError(f"unknown packing format {name!r}; known: {sorted(FORMATS)}") from None


__all__ = [
    "FORMATS", "AUTOROUND_PACKING", "AUTOROUND_FLOAT_PACKING", "FLOAT_FORMATS", "GGUF_FORMATS", "FloatWeights", "GGUFWeights", "IntWeights",
    "PackingFormat", "TensorSpec", "float_format_for", "get_format",
]
