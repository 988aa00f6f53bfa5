#!/usr/bin/env bash
# Set up .venv and run the whole test suite: from source, then the end-to-end
# tests again against a freshly built release-pack (the compiled product).
# With arguments, runs only `pytest <arguments>` from source.
set -uo pipefail
cd "$(dirname "$0")/.."
EXTRA_REQUIREMENTS="-r requirements/test.txt" bash scripts/setup.sh || exit 1

run_pytest() {
  .venv/bin/python -m pytest "$@"
  local rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure" >&2
    return 1
  fi
  return "$rc"
}

if [ "$#" -gt 0 ]; then
  run_pytest "$@"
  exit $?
fi

echo "== building the release-pack"
.venv/bin/python build_release.py || exit 1
echo "== the whole suite, from source"
AISRV_RELEASE_PACK=release-pack run_pytest || exit 1
echo "== end-to-end tests against release-pack/run.py"
AISRV_TEST_RUN_PY=release-pack/run.py run_pytest tests/e2e tests/test_cli.py tests/test_cli_client.py || exit 1
echo "== all passed"
