"""Damaged real AutoRound exports: every failure is a QuantLinearError naming what is wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("auto_round")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import quantlinear  # noqa: E402
from quantlinear import CheckpointError, ConfigError, QuantLinearError, UnknownBackendError  # noqa: E402

from . import helpers  # noqa: E402

pytestmark = pytest.mark.interop

SINGLE = "ar_w4g128_sym"  # one model.safetensors
SHARDED = "qwen2_shard_w4g64_asym"  # model-0000k-of-0000n.safetensors + index


def _load(d: Path, backend: str = "auto"):
    return helpers.load_quantlinear(d, backend)


def _shard_of(d: Path, tensor: str) -> Path:
    idx = d / "model.safetensors.index.json"
    if idx.exists():
        return d / json.loads(idx.read_text())["weight_map"][tensor]
    return d / "model.safetensors"


def _rewrite(d: Path, tensor: str, new: torch.Tensor | None) -> None:
    """Rewrite the shard holding ``tensor`` with it replaced (or removed, ``new=None``)."""
    f = _shard_of(d, tensor)
    sd = load_file(str(f))
    assert tensor in sd
    if new is None:
        del sd[tensor]
    else:
        sd[tensor] = new.contiguous()
    save_file(sd, str(f), metadata={"format": "pt"})


def _edit_quant_config(d: Path, **changes) -> None:
    for fname in ("config.json", "quantization_config.json"):
        p = d / fname
        if not p.exists():
            continue
        cfg = json.loads(p.read_text())
        q = cfg["quantization_config"] if fname == "config.json" else cfg
        q.update(changes)
        p.write_text(json.dumps(cfg, indent=2))


def _raises(exc_type, d: Path, *needles: str, backend: str = "auto") -> str:
    with pytest.raises(exc_type) as ei:
        _load(d, backend)
    msg = str(ei.value)
    assert isinstance(ei.value, QuantLinearError)
    for n in needles:
        assert n in msg, f"message does not name {n!r}: {msg}"
    return msg


def test_truncated_shard(exports, tmp_path):
    d = exports.copy_of(SHARDED, tmp_path / "ck")
    shard = _shard_of(d, "model.layers.1.mlp.down_proj.qweight")
    size = shard.stat().st_size
    with open(shard, "r+b") as fh:
        fh.truncate(size // 2)
    msg = _raises(CheckpointError, d, shard.name)
    assert "truncated" in msg or "corrupt" in msg


@pytest.mark.parametrize(
    "tensor, make_bad",
    [
        ("model.layers.0.mlp.up_proj.scales", lambda t: torch.cat([t, t[:1]], 0)),  # one group too many
        ("model.layers.1.self_attn.k_proj.qweight", lambda t: t[:-1]),  # one packed row short
        ("model.layers.0.self_attn.o_proj.qzeros", lambda t: t.repeat(1, 2)),  # zeros for 2N channels
        ("model.norm.weight", lambda t: t[:-4]),  # a float tensor
    ],
    ids=["scales", "qweight", "qzeros", "float"],
)
def test_tensor_with_wrong_shape(exports, tmp_path, tensor, make_bad):
    d = exports.copy_of(SINGLE, tmp_path / "ck")
    t = load_file(str(_shard_of(d, tensor)))[tensor]
    bad = make_bad(t)
    _rewrite(d, tensor, bad)
    layer, _, tname = tensor.rpartition(".")
    msg = _raises(CheckpointError, d, layer, tname)
    assert str(tuple(bad.shape)) in msg, msg


@pytest.mark.parametrize("tensor", ["model.layers.1.self_attn.k_proj.qzeros", "model.layers.0.mlp.gate_proj.scales",
                                    "model.layers.0.input_layernorm.weight"])
def test_missing_tensor(exports, tmp_path, tensor):
    d = exports.copy_of(SINGLE, tmp_path / "ck")
    _rewrite(d, tensor, None)
    layer, _, tname = tensor.rpartition(".")
    msg = _raises(CheckpointError, d, layer)
    assert tname in msg


def test_missing_tensor_listed_in_index(exports, tmp_path):
    """Sharded: the index still names the tensor, the shard no longer holds it."""
    d = exports.copy_of(SHARDED, tmp_path / "ck")
    tensor = "model.layers.1.mlp.up_proj.qweight"
    _rewrite(d, tensor, None)
    _raises(CheckpointError, d, tensor)


@pytest.mark.parametrize("bits", [1, 16, 9])
def test_unsupported_bits_in_config(exports, tmp_path, bits):
    d = exports.copy_of(SINGLE, tmp_path / "ck")
    _edit_quant_config(d, bits=bits)
    with pytest.raises(QuantLinearError) as ei:
        _load(d)
    assert f"bits={bits}" in str(ei.value) or f"bits {bits}" in str(ei.value), str(ei.value)


def test_unsupported_bits_in_layer_override(exports, tmp_path):
    d = exports.copy_of(SINGLE, tmp_path / "ck")
    layer = "model.layers.0.self_attn.v_proj"
    _edit_quant_config(d, extra_config={layer: {"bits": 1}})
    msg = _raises(ConfigError, d, layer)
    assert "bits=1" in msg


def test_unknown_packing_format(exports, tmp_path):
    d = exports.copy_of(SINGLE, tmp_path / "ck")
    _edit_quant_config(d, packing_format="auto_round:bogus_v9")
    _raises(ConfigError, d, "auto_round:bogus_v9")


@pytest.mark.parametrize("backend", ["cpu.nonexistent", "marlin"])
def test_unknown_backend(exports, backend):
    d = exports.get(SINGLE).dir
    msg = _raises(UnknownBackendError, d, backend, backend=backend)
    assert re.search(r"model\.layers\.\d+\.", msg), f"message names no layer: {msg}"


def test_bin_file_only(exports, tmp_path):
    d = exports.copy_of(SINGLE, tmp_path / "ck")
    sd = helpers.read_tensors(d)
    torch.save(sd, d / "pytorch_model.bin")
    for f in d.glob("*.safetensors"):
        f.unlink()
    _raises(CheckpointError, d, "pytorch_model.bin")
