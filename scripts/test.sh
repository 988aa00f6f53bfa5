#!/usr/bin/env bash
# Set up and run the whole test suite.
set -uo pipefail
cd "$(dirname "$0")/.."
EXTRA_REQUIREMENTS="-r requirements/test.txt" bash scripts/setup.sh || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
