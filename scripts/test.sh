#!/usr/bin/env bash
# Set up .venv and run the whole test suite: the unit and API tests from source
# (with a smoke of the end-to-end tests: a node started from source), then every
# end-to-end test against a freshly built release-pack (the compiled product, what
# devices run). With arguments, runs only `pytest <arguments>` from source.
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

echo "== import contracts (.importlinter: the floors, the nevers, no circles)"
PYTHONPATH=src .venv/bin/lint-imports --no-cache --no-logo || exit 1
echo "== building the release-pack"
.venv/bin/python build_release.py || exit 1
echo "== unit and API tests, from source"
AISRV_RELEASE_PACK=release-pack run_pytest --ignore=tests/e2e || exit 1
echo "== a node started from source"
run_pytest tests/e2e/test_rest.py tests/e2e/test_grpc.py || exit 1
echo "== end-to-end tests against release-pack/run.py"
AISRV_TEST_RUN_PY=release-pack/run.py run_pytest tests/e2e tests/cli || exit 1
echo "== all passed"
