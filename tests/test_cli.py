"""The command line, as a person and as a script use it."""

import json
import subprocess
import sys

import pytest

from quantlinear.cli import main


def run(*args):
    r = subprocess.run([sys.executable, "-m", "quantlinear", *args], capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


def test_doctor_lists_plugins_and_kernels():
    rc, out, err = run("doctor")
    assert rc == 0, err
    assert "plugins:" in out and "cpu" in out and "cpu.int4pack" in out
    rc, out, _ = run("doctor", "--json")
    d = json.loads(out)
    assert d["versions"]["torch"]
    cpu = next(p for p in d["plugins"] if p["name"] == "cpu")
    assert cpu["state"] == "loaded" and "cpu.dequant" in cpu["kernels"]
    prios = [k["priority"] for k in d["kernels"]]
    assert prios == sorted(prios, reverse=True)


def test_inspect_shows_layers_kernels_and_reasons(tiny_ckpt, capsys):
    assert main(["inspect", str(tiny_ckpt), "--device", "cpu", "--dtype", "bf16", "--explain", "--layers", "--backend", "cpu.int4pack"]) == 0
    out = capsys.readouterr().out
    assert "int4_g32_sym" in out and "layers.0.up" in out and "-> cpu.int4pack" in out
    assert main(["inspect", str(tiny_ckpt), "--device", "cpu", "--dtype", "bf16", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "bits=4 not supported (supports 8)" in out  # cpu.int8pack's reason
    assert main(["inspect", str(tiny_ckpt), "--device", "cpu", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["quantized_layers"] == 4 and all(layer["kernel"].startswith("cpu.") for layer in d["layers"])
    assert d["layers"][0]["in_features"] in (64, 128)


def test_inspect_exit_code_when_no_kernel_fits(tiny_ckpt, capsys):
    assert main(["inspect", str(tiny_ckpt), "--device", "meta"]) == 1
    assert "runs on cpu, not meta" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_explain_command(capsys):
    assert main(["explain", "--scheme", "W3A16", "--in-features", "256", "--out-features", "64", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "int3_g128_sym" in out and "->" in out


def test_python_dash_m_and_version():
    rc, out, _ = run("--version")
    assert rc == 0 and out.startswith("quantlinear ")


@pytest.mark.parametrize("preset, fmt, packing", [("MXFP4", "mxfp4", "auto_round:llm_compressor"), ("MXFP8", "mxfp8", "auto_round:llm_compressor"), ("FP8_STATIC", "fp8", "auto_round:fp8_static")])
def test_inspect_reads_float_checkpoints(tmp_path, capsys, preset, fmt, packing):
    """in/out features come from each float layout's own tensors (weight_packed [N, K/2] or weight [N, K])."""
    import torch
    from safetensors.torch import save_file

    import quantlinear as ql
    from quantlinear.formats import get_format
    from quantlinear.fpquant import quantize_float

    scheme = ql.get_scheme(preset)
    spec = ql.LayerSpec(scheme, fmt, 128, 64, False, torch.float32, "cpu", False, "blocks.0.proj")
    tensors = get_format(fmt).pack(quantize_float(torch.randn(64, 128), scheme), spec)
    save_file({f"blocks.0.proj.{k}": v.contiguous() for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    qc = {k: v for k, v in scheme.to_dict().items() if v is not None}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "auto-round", "packing_format": packing, **qc}}))
    assert main(["inspect", str(tmp_path), "--device", "cpu", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["config"]["format"] == fmt
    assert [(layer["in_features"], layer["out_features"]) for layer in d["layers"]] == [(128, 64)]


def test_bench_passes_rounds_and_kernels_to_the_plugins_runner(monkeypatch, capsys):
    """``quantlinear bench --rounds`` reaches the runner's options (the CUDA runner takes that many timed batches per
    implementation, in turns, and reports their median)."""
    registry_mod = sys.modules["quantlinear.registry"]  # (the package exports a function of the same name)

    seen = {}

    class FakeRegistry:
        def load_for_family(self, fam):
            seen["family"] = fam

        def benchmark_runner(self, fam):
            def run(opts):
                seen["opts"] = opts
                return []
            return run

    monkeypatch.setattr(registry_mod, "registry", lambda: FakeRegistry())
    assert main(["bench", "--device", "cpu", "--rounds", "25", "--m", "1,16", "--kernels", "cpu.*", "--json"]) == 0
    opts = seen["opts"]
    assert (seen["family"], opts.rounds, opts.ms, opts.kernels) == ("cpu", 25, (1, 16), ("cpu.*",))
    assert main(["bench", "--device", "cpu", "--json"]) == 0 and seen["opts"].rounds == 9  # the default


def test_bench_refuses_zero_rounds(capsys):
    assert main(["bench", "--device", "cpu", "--rounds", "0"]) == 2
    assert "rounds must be at least 1" in capsys.readouterr().err
