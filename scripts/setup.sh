#!/usr/bin/env bash
# Make .venv in the checkout with the pinned requirements of this target (x86 CPU),
# and generate the gRPC modules from the .proto files.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q -r requirements/x86-cpu.txt -r requirements/base.txt \
  -r requirements/build.txt ${EXTRA_REQUIREMENTS:-}
.venv/bin/python scripts/gen_protos.py
