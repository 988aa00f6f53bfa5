#!/usr/bin/env bash
# Build the Rockchip release-pack without Docker: in a Debian bookworm arm64 root
# filesystem (debootstrap, entered with chroot; QEMU runs it on an x86 machine), the way
# a board builds it; install its requirements there as a board would; run the pack's
# node there and the device smoke against it (the same bundles and inputs as an x86
# node). For people and developers, not CI: under emulation it takes most of an hour.
#
#   sudo bash scripts/build_arm64_pack.sh [--rootfs DIR] [--keep-pack]
#
# --rootfs  the arm64 root filesystem to build in (default build/arm64-pack/rootfs, made
#           with debootstrap when missing and kept for the next run)
# --keep-pack  reuse the pack a previous run built there (skips half an hour of emulated
#           compiling when only the smoke is wanted again)
# Leaves build/arm64-pack/release-pack and release-pack-rockchip-<version>.tar.gz (the pack
# to copy onto a board: docs/devices.md); mounts /proc, /sys, /dev into the root
# filesystem for the run and unmounts them, and stops the node it starts.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/arm64_env.sh

WORK=$PWD/build/arm64-pack
ROOTFS=$WORK/rootfs
KEEP_PACK=no
while [ $# -gt 0 ]; do
  case $1 in
    --rootfs) ROOTFS=$(realpath -m "$2"); shift 2 ;;
    --keep-pack) KEEP_PACK=yes; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)." ;;
  esac
done
[ "$(id -u)" -eq 0 ] || die "chroot and mount need root: run it with sudo."
need_arm64
[ -x .venv/bin/python ] && .venv/bin/python -c "import onnx, tensorflow, grpc" 2>/dev/null \
  || die "the smoke needs the checkout's .venv with the test requirements (scripts/setup.sh with EXTRA_REQUIREMENTS='-r requirements/test.txt')."
mkdir -p "$WORK"

MOUNTS=()
NODE_PID=""
cleanup() {
  if [ -n "$NODE_PID" ] && kill -0 "$NODE_PID" 2>/dev/null; then
    kill -TERM "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true
  fi
  local n
  for (( n=${#MOUNTS[@]}-1; n>=0; n-- )); do umount -l "${MOUNTS[$n]}" 2>/dev/null || true; done
}
trap cleanup EXIT
mount_in() {  # mount_in TARGET mount-arguments...
  local target=$1; shift
  [ -e "$target" ] || mkdir -p "$target"
  mount "$@" "$target"
  MOUNTS+=("$target")
}

if [ ! -x "$ROOTFS/usr/bin/python3" ] || [ ! -x "$ROOTFS/usr/bin/gcc" ]; then
  make_rootfs "$ROOTFS" python3,python3-venv,python3-dev,python-is-python3,ca-certificates,gcc,g++,make,libgomp1,libjpeg62-turbo
fi
in_root() { chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root "$@"; }
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
mount_in "$ROOTFS/proc" -t proc proc
mount_in "$ROOTFS/sys" -t sysfs sys
mount_in "$ROOTFS/dev" --bind /dev
mount_in "$ROOTFS/dev/shm" -t tmpfs -o mode=1777 shm  # multiprocessing's semaphores
if emulated_arm64; then
  fake_cpuinfo "$WORK/cpuinfo"
  mount_in "$ROOTFS/proc/cpuinfo" --bind "$WORK/cpuinfo"
fi
echo "== in $ROOTFS: $(in_root python -c 'import platform, sys; print(platform.machine(), "Python", sys.version.split()[0])')"

# What a build reads: the checkout's tracked and not-ignored files, copied afresh.
rm -rf "$ROOTFS/opt/aiserving-src"
mkdir -p "$ROOTFS/opt/aiserving-src"
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$ROOTFS/opt/aiserving-src"

started=$(date +%s)
if [ "$KEEP_PACK" = yes ] && [ -f "$ROOTFS/opt/release-pack/BUILD_INFO.json" ]; then
  echo "== --keep-pack: the pack a previous run built in $ROOTFS/opt/release-pack (not rebuilt)"
else
  KEEP_PACK=no
  echo "== build tools and build_release.py --target rockchip (compiled by the arm64 gcc)"
  in_root sh -c 'cd /opt/aiserving-src && { [ -x /opt/build-venv/bin/python ] || python -m venv /opt/build-venv; } \
    && /opt/build-venv/bin/pip install -q --no-cache-dir -r requirements/build.txt setuptools==80.9.0 \
    && /opt/build-venv/bin/python build_release.py --target rockchip --out /opt/release-pack' \
    > "$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; die "the pack did not build (log: $WORK/build.log)."; }
fi
BUILD_S=$(( $(date +%s) - started ))
grep '^build_release:' "$WORK/build.log" | sed 's/^/   /'

echo "== the pack's requirements, installed as on a board (pip install -r release-pack/requirements.txt)"
started=$(date +%s)
in_root sh -c '{ [ -x /opt/venv/bin/python ] || python -m venv /opt/venv; } \
  && /opt/venv/bin/pip install -q --no-cache-dir -r /opt/release-pack/requirements.txt' \
  > "$WORK/install.log" 2>&1 || { tail -30 "$WORK/install.log" >&2; die "the requirements did not install (log: $WORK/install.log)."; }
INSTALL_S=$(( $(date +%s) - started ))

PACK=$ROOTFS/opt/release-pack
SOURCES=$(cd "$PACK" && find . -name '*.py' | sort | tr '\n' ' ')
[ "$SOURCES" = "./run.py ./settings.py " ] || die "the pack holds Python source beyond run.py and settings.py: $SOURCES"
MODULES=$(find "$PACK/aiserving" -name '*.so' | wc -l)
grep -q '"machine": "aarch64"' "$PACK/BUILD_INFO.json" || die "the pack was not built for aarch64: $(cat "$PACK/BUILD_INFO.json")"

echo "== the pack's node, run as uid 10001 in the root filesystem, and the device smoke"
# Written, not useradd-ed: a minbase root filesystem has no passwd package.
in_root sh -c 'id aiserving >/dev/null 2>&1 || { echo "aiserving:x:10001:10001:AIServing OnBoard:/var/lib/aiserving:/usr/sbin/nologin" >> /etc/passwd && echo "aiserving:x:10001:" >> /etc/group; }'
STORAGE=$ROOTFS/var/lib/aiserving/storage
rm -rf "$STORAGE"
.venv/bin/python scripts/device_smoke.py prepare --storage "$STORAGE" 2> "$WORK/prepare.err" \
  || { tail -20 "$WORK/prepare.err" >&2; die "the smoke's bundles could not be made."; }
chown -R 10001:10001 "$ROOTFS/var/lib/aiserving"
HTTP_PORT=$(free_port); GRPC_PORT=$(free_port); OIP_PORT=$(free_port); REDIS_PORT=$(free_port)
chroot --userspec=10001:10001 "$ROOTFS" /usr/bin/env -i PATH=/opt/venv/bin:/usr/bin:/bin \
  HOME=/var/lib/aiserving AISRV_STORAGE=/var/lib/aiserving/storage AISRV_HTTP_PORT="$HTTP_PORT" \
  AISRV_GRPC_ADDRESS="127.0.0.1:$GRPC_PORT" AISRV_OIP_GRPC_ADDRESS="127.0.0.1:$OIP_PORT" \
  AISRV_REDIS_PORT="$REDIS_PORT" python /opt/release-pack/run.py > "$WORK/node.log" 2>&1 &
NODE_PID=$!
started=$(date +%s)
until chroot "$ROOTFS" /usr/bin/env -i AISRV_HTTP_PORT="$HTTP_PORT" /opt/venv/bin/python \
    /opt/release-pack/run.py health --timeout 2 >/dev/null 2>&1 </dev/null; do
  kill -0 "$NODE_PID" 2>/dev/null || { tail -30 "$WORK/node.log" >&2; die "the pack's node exited."; }
  [ $(( $(date +%s) - started )) -lt 600 ] || { tail -30 "$WORK/node.log" >&2; die "the pack's node did not answer /healthz."; }
  sleep 3
done
UP_S=$(( $(date +%s) - started ))
RSS_MB=$(.venv/bin/python -c "import psutil; p = psutil.Process($NODE_PID); print(round(sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20))")
.venv/bin/python scripts/device_smoke.py check --storage "$STORAGE" \
  --node-storage /var/lib/aiserving/storage --node "http://127.0.0.1:$HTTP_PORT" \
  --grpc "127.0.0.1:$GRPC_PORT" --redis-port "$REDIS_PORT" \
  --expect-types onnx,tensorflow-lite,rknn 2> "$WORK/smoke.err" | sed 's/^/   /' \
  || { grep -v '^[IWE]0000\|^WARNING: All log\|^To enable' "$WORK/smoke.err" | tail -30 >&2; die "the device smoke failed."; }
kill -TERM "$NODE_PID"; wait "$NODE_PID" || die "the pack's node did not stop cleanly on SIGTERM (log: $WORK/node.log)."
NODE_PID=""

rm -rf "$WORK/release-pack"
cp -a "$PACK" "$WORK/release-pack"
VERSION=$(cat "$PACK/VERSION")
tar -C "$WORK" -czf "$WORK/release-pack-rockchip-$VERSION.tar.gz" release-pack
echo "== arm64 release-pack (Rockchip target)"
echo "   pack            $WORK/release-pack ($(du -sm "$WORK/release-pack" | cut -f1) MB, $MODULES compiled modules; $(tr -d '\n ' < "$PACK/BUILD_INFO.json"))"
echo "   archive         $WORK/release-pack-rockchip-$VERSION.tar.gz ($(du -m "$WORK/release-pack-rockchip-$VERSION.tar.gz" | cut -f1) MB)"
if [ "$KEEP_PACK" = yes ]; then BUILT="the pack kept from a previous run"; else BUILT="$BUILD_S s (build tools + compile)"; fi
echo "   build time      $BUILT, requirements $INSTALL_S s"
echo "   node            uid 10001, /healthz after $UP_S s, idle RSS $RSS_MB MB$(emulated_arm64 && echo ' (under QEMU: more than on a board)')"
echo "== done"
