#!/usr/bin/env bash
# README command 2: set up (if needed) and run the whole test suite on the CPU.
# Triton kernels run under the Triton interpreter (TRITON_INTERPRET=1) in their own tests.
# pytest's exit code 5 ("no tests ran") is a failure here, never a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
. .venv/bin/activate
python -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
