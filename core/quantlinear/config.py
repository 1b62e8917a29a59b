"""Reading the ``quantization_config`` that AutoRound, GPTQ and AWQ write.

All config dialects are translated here into one :class:`QuantConfig`: a global
:class:`~quantlinear.scheme.Scheme`, a canonical packing format, and per-layer overrides
resolved the way AutoRound's loader resolves them (``auto_round/inference/convert_model.py``
``get_layer_config``): an exact module name wins, otherwise the first regex key (in config
order) that ``re.search``-matches; ``bits >= 16`` means "keep this layer in float".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, QuantLinearError
from .formats import AUTOROUND_PACKING, float_format_for
from .scheme import Scheme

_SCHEME_KEYS = ("bits", "group_size", "sym", "data_type", "act_bits", "act_data_type", "act_group_size", "act_sym", "act_dynamic")


def _flatten(x: Any) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [p.strip() for p in x.split(",") if p.strip()]
    out: list[str] = []
    for item in x:
        out.extend(_flatten(item))
    return out


@dataclass(frozen=True)
class QuantConfig:
    """A checkpoint's quantization config, dialect-free."""

    quant_method: str
    format: str | None  # canonical packing format of the scheme's layers (None: no known layout)
    scheme: Scheme
    packing_format: str | None = None
    block_names: tuple[str, ...] = ()
    overrides: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    skip_modules: tuple[str, ...] = ()
    in_block_modules: tuple[str, ...] = ()
    desc_act: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    # ---- per-layer resolution ------------------------------------------------------------
    def _override_for(self, name: str) -> Mapping[str, Any] | None:
        for key, cfg in self.overrides:
            if key == name:
                return cfg
        for key, cfg in self.overrides:
            try:
                if re.search(key, name):
                    return cfg
            except re.error:
                continue
        return None

    def layer_scheme(self, name: str) -> Scheme | None:
        """The scheme of module ``name``, or None when the checkpoint keeps it in float."""
        if any(name == m or name.endswith("." + m) or m in name.split(".") for m in self.skip_modules):
            return None
        if self.in_block_modules and self.block_names and self._in_blocks(name):
            if not any(re.search(m, name) for m in self.in_block_modules):
                return None
        cfg = self._override_for(name)
        if cfg is None:
            return self.scheme
        bits = cfg.get("bits", self.scheme.bits)
        if bits is None or int(bits) >= 16:
            return None
        try:
            return Scheme.from_dict({k: cfg[k] for k in _SCHEME_KEYS if k in cfg}, base=self.scheme)
        except QuantLinearError as e:
            raise ConfigError(f"layer {name!r}: invalid per-layer override {dict(cfg)}: {e}") from None

    def _in_blocks(self, name: str) -> bool:
        return any(name == b or name.startswith(b + ".") for b in self.block_names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant_method": self.quant_method,
            "packing_format": self.packing_format,
            "format": self.format,
            "scheme": self.scheme.to_dict(),
            "scheme_id": self.scheme.id,
            "block_names": list(self.block_names),
            "overrides": {k: dict(v) for k, v in self.overrides},
            "skip_modules": list(self.skip_modules),
            "desc_act": self.desc_act,
        }


# ---- dialects -----------------------------------------------------------------------------------
def _scheme_from(d: Mapping[str, Any], where: str) -> Scheme:
    try:
        return Scheme.from_dict({k: d[k] for k in _SCHEME_KEYS if k in d})
    except QuantLinearError as e:
        raise ConfigError(f"{where}: {e}") from None


def _parse_autoround(d: Mapping[str, Any]) -> QuantConfig:
    scheme = _scheme_from(d, "quantization_config")
    packing = d.get("packing_format") or ("auto_round:auto_gptq" if scheme.data_type == "int" else None)
    fmt = None
    if scheme.data_type == "int":
        fmt = AUTOROUND_PACKING.get(packing)
        if fmt is None:
            raise ConfigError(
                f"quantization_config: packing_format={packing!r} is not known for int schemes; "
                f"known: {sorted(AUTOROUND_PACKING)}"
            )
    elif str(d.get("fmt") or "e4m3").lower() == "e4m3":  # FP8 exports say fmt e4m3/e5m2; only E4M3 is read
        fmt = float_format_for(scheme.data_type, scheme.bits, packing)
    overrides = []
    extra = d.get("extra_config") or {}
    if not isinstance(extra, Mapping):
        raise ConfigError(f"quantization_config: extra_config must be a mapping, got {type(extra).__name__}")
    for k, v in extra.items():
        if not isinstance(v, Mapping):
            raise ConfigError(f"quantization_config: extra_config[{k!r}] must be a mapping, got {v!r}")
        overrides.append((str(k), dict(v)))
    blocks = d.get("block_name_to_quantize", d.get("to_quant_block_names"))
    return QuantConfig(
        quant_method="auto-round",
        format=fmt,
        scheme=scheme,
        packing_format=packing,
        block_names=tuple(_flatten(blocks)),
        overrides=tuple(overrides),
        skip_modules=tuple(_flatten(d.get("modules_to_not_convert"))),
        raw=dict(d),
    )


def _parse_gptq(d: Mapping[str, Any]) -> QuantConfig:
    d = dict(d)
    d.setdefault("sym", True)
    scheme = _scheme_from(d, "quantization_config (gptq)")
    ckpt_fmt = str(d.get("checkpoint_format", "gptq")).lower()
    if ckpt_fmt not in ("gptq", "gptq_v2"):
        raise ConfigError(f"quantization_config: checkpoint_format={ckpt_fmt!r} is not supported (gptq, gptq_v2)")
    overrides = []
    for key, cfg in (d.get("dynamic") or {}).items():
        key = str(key)
        if key.startswith("-:"):
            overrides.append((key[2:], {"bits": 16}))
        else:
            overrides.append((key[2:] if key.startswith("+:") else key, dict(cfg or {})))
    blocks = d.get("block_name_to_quantize", d.get("to_quant_block_names"))
    return QuantConfig(
        quant_method="gptq",
        format=ckpt_fmt,
        scheme=scheme,
        packing_format=ckpt_fmt,
        block_names=tuple(_flatten(blocks)),
        overrides=tuple(overrides),
        in_block_modules=tuple(_flatten(d.get("modules_in_block_to_quantize"))),
        desc_act=bool(d.get("desc_act", False)),
        raw=d,
    )


def _parse_awq(d: Mapping[str, Any]) -> QuantConfig:
    version = str(d.get("version", "gemm")).lower()
    if version != "gemm":
        raise ConfigError(f"quantization_config: AWQ version={version!r} is not supported (only 'gemm')")
    bits = d.get("bits", d.get("w_bit", 4))
    group = d.get("group_size", d.get("q_group_size", 128))
    if "sym" in d:
        sym = bool(d["sym"])
    else:
        sym = not bool(d.get("zero_point", True))
    scheme = _scheme_from({"bits": bits, "group_size": group, "sym": sym}, "quantization_config (awq)")
    return QuantConfig(
        quant_method="awq",
        format="awq",
        scheme=scheme,
        packing_format="awq",
        skip_modules=tuple(_flatten(d.get("modules_to_not_convert"))),
        raw=dict(d),
    )


_DIALECTS = {"auto-round": _parse_autoround, "auto_round": _parse_autoround, "intel/auto-round": _parse_autoround, "gptq": _parse_gptq, "awq": _parse_awq}


def parse_quantization_config(d: Mapping[str, Any]) -> QuantConfig:
    """Parse one ``quantization_config`` mapping (any supported dialect)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"quantization_config must be a JSON object, got {type(d).__name__}")
    method = str(d.get("quant_method", "")).lower()
    if method not in _DIALECTS:
        raise ConfigError(f"quantization_config: quant_method={d.get('quant_method')!r} is not supported; supported: auto-round, gptq, awq")
    return _DIALECTS[method](d)


def read_quant_config(path: str | Path) -> tuple[QuantConfig, dict[str, Any]]:
    """Find and parse the quantization config of a checkpoint directory.

    Looks in ``config.json`` (key ``quantization_config``), then ``quantization_config.json``,
    then ``quantize_config.json`` (AutoGPTQ).  Returns the parsed config and the model config.
    """
    path = Path(path)
    model_cfg: dict[str, Any] = {}
    qd = None
    cfg_file = path / "config.json"
    if cfg_file.exists():
        model_cfg = _read_json(cfg_file)
        qd = model_cfg.get("quantization_config")
    for fname in ("quantization_config.json", "quantize_config.json"):
        if qd is None and (path / fname).exists():
            qd = _read_json(path / fname)
            if fname == "quantize_config.json":
                qd = {"quant_method": "gptq", **qd}
    if qd is None:
        raise ConfigError(
            f"{path}: no quantization config found (looked for config.json:quantization_config, "
            "quantization_config.json, quantize_config.json)"
        )
    return parse_quantization_config(qd), model_cfg


def _read_json(p: Path) -> dict[str, Any]:
    try:
        with open(p, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: cannot read JSON: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: expected a JSON object, got {type(d).__name__}")
    return d


def with_scheme(cfg: QuantConfig, scheme: Scheme) -> QuantConfig:
    return replace(cfg, scheme=scheme)
