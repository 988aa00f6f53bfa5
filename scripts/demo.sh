#!/usr/bin/env bash
# Set up and run a node on its embedded defaults with the demo model loaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python run.py --demo "$@"
