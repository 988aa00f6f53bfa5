#!/usr/bin/env bash
# Build the Rockchip image for linux/arm64 (under QEMU on an x86 machine), run it, and run
# the device smoke against it; with --jetson, build Dockerfile.jetson as far as a
# substitute base allows. For people and developers, not CI: under emulation it takes
# about an hour the first time (layers are cached after that).
#
#   bash scripts/build_images.sh [--base IMAGE] [--rknn-runtime URL|FILE] [--jetson]
#
# --base          the Debian bookworm arm64 base (PYTHON_IMAGE); default: the local image
#                 aiserving-base:bookworm-arm64, made here with debootstrap when missing
# --rknn-runtime  Rockchip's librknnrt.so (a URL or a file); default: librknnrt.so beside
#                 Dockerfile.rk, else a stand-in built from tests/support/rknnrt_standin.c
#                 (no NPU behind it: the image builds and rknnlite imports; nothing runs on
#                 an NPU)
# Needs: a running Docker daemon with BuildKit, QEMU for arm64 (binfmt_misc) unless this
# machine is arm64, the checkout's .venv with the test requirements (the smoke's x86 node
# and model builders), and root to make the base. Starts a container and a loopback file
# server, and stops both; leaves the images and build/images/ (logs, storage).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/arm64_env.sh

BASE=""
RUNTIME=""
JETSON=no
while [ $# -gt 0 ]; do
  case $1 in
    --base) BASE=$2; shift 2 ;;
    --rknn-runtime) RUNTIME=$2; shift 2 ;;
    --jetson) JETSON=yes; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)." ;;
  esac
done

WORK=$PWD/build/images
IMAGE=aiserving-onboard:rk
DEFAULT_BASE=aiserving-base:bookworm-arm64
mkdir -p "$WORK"
CONTAINER=""
SERVER_PID=""
cleanup() {
  [ -n "$CONTAINER" ] && docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
}
trap cleanup EXIT

# --- what is needed, each missing piece in one sentence
command -v docker >/dev/null || die "the docker command is missing (Debian: apt-get install docker.io)."
docker info >/dev/null 2>&1 || die "Docker's daemon does not answer: start it (systemctl start docker, or dockerd &) and check that you may use it."
pick_builder() {
  if docker buildx version >/dev/null 2>&1; then
    BUILD=(docker buildx build --load --progress=plain); return
  fi
  local client major
  for client in $(type -ap docker); do
    major=$("$client" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
    if [ -n "$major" ] && [ "$major" -lt 23 ]; then  # its `build` still speaks BuildKit itself
      BUILD=(env DOCKER_BUILDKIT=1 "$client" build --progress=plain); return
    fi
  done
  die "BuildKit is needed (an arm64 image from a local base): install Docker's buildx plugin (Debian: docker-buildx)."
}
pick_builder
need_arm64
[ -x .venv/bin/python ] && .venv/bin/python -c "import onnx, tensorflow, grpc" 2>/dev/null \
  || die "the smoke needs the checkout's .venv with the test requirements: run bash scripts/test.sh --co -q (or scripts/setup.sh with EXTRA_REQUIREMENTS='-r requirements/test.txt')."

# --- the base: Debian bookworm arm64 with Python 3.11, made from Debian's packages
if [ -z "$BASE" ]; then
  BASE=$DEFAULT_BASE
  if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    make_rootfs "$WORK/base-rootfs" python3,python3-venv,python-is-python3,ca-certificates
    mkdir -p "$WORK/base-context"
    tar -C "$WORK/base-rootfs" -cf "$WORK/base-context/rootfs.tar" .
    printf 'FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n' > "$WORK/base-context/Dockerfile"
    # Built, not `docker import`ed: import records this machine's architecture, not arm64.
    "${BUILD[@]}" --platform linux/arm64 -t "$BASE" "$WORK/base-context" > "$WORK/base.log" 2>&1 \
      || { tail -20 "$WORK/base.log" >&2; die "the base image did not build (log: $WORK/base.log)."; }
    rm -rf "$WORK/base-rootfs" "$WORK/base-context"
  fi
fi
[ "$(docker image inspect -f '{{.Architecture}}' "$BASE" 2>/dev/null)" = arm64 ] \
  || die "the base $BASE is not an arm64 image here (docker image inspect says $(docker image inspect -f '{{.Architecture}}' "$BASE" 2>/dev/null || echo nothing))."

BUILD_ARGS=(-f Dockerfile.rk --platform linux/arm64 --network host --build-arg "PYTHON_IMAGE=$BASE")
serve_runtime() {  # a file, offered to the build on loopback (the build runs on the host network)
  local folder port
  folder=$(mktemp -d "$WORK/runtime.XXXX")
  cp "$1" "$folder/librknnrt.so"
  port=$(free_port)
  python3 -m http.server --bind 127.0.0.1 --directory "$folder" "$port" >"$WORK/runtime-server.log" 2>&1 &
  SERVER_PID=$!
  sleep 1
  RUNTIME_URL="http://127.0.0.1:$port/librknnrt.so"
}
RUNTIME_NOTE=""
if [ -n "$RUNTIME" ] && [[ "$RUNTIME" == *://* ]]; then
  BUILD_ARGS+=(--build-arg "RKNN_RUNTIME=$RUNTIME"); RUNTIME_NOTE="Rockchip's runtime from $RUNTIME"
elif [ -n "$RUNTIME" ]; then
  [ -f "$RUNTIME" ] || die "--rknn-runtime $RUNTIME: no such file."
  serve_runtime "$RUNTIME"
  BUILD_ARGS+=(--build-arg "RKNN_RUNTIME=$RUNTIME_URL"); RUNTIME_NOTE="the runtime in $RUNTIME"
elif [ -f librknnrt.so ]; then
  RUNTIME_NOTE="librknnrt.so beside Dockerfile.rk"
else
  echo "== no librknnrt.so given: building the stand-in in the image's own builder stage"
  started=$(date +%s)
  "${BUILD[@]}" "${BUILD_ARGS[@]}" --target builder -t "$IMAGE-builder" . > "$WORK/build-builder.log" 2>&1 \
    || { tail -30 "$WORK/build-builder.log" >&2; die "the builder stage failed (log: $WORK/build-builder.log)."; }
  echo "   builder stage built in $(( $(date +%s) - started )) s"
  mkdir -p "$WORK/standin"
  docker run --rm --platform linux/arm64 -v "$PWD/tests/support:/src:ro" -v "$WORK/standin:/out" \
    "$IMAGE-builder" gcc -shared -fPIC -O2 -Wall -o /out/librknnrt.so /src/rknnrt_standin.c
  serve_runtime "$WORK/standin/librknnrt.so"
  BUILD_ARGS+=(--build-arg "RKNN_RUNTIME=$RUNTIME_URL")
  RUNTIME_NOTE="the stand-in runtime (tests/support/rknnrt_standin.c: no NPU behind it)"
fi

# --- the image
echo "== building $IMAGE for linux/arm64 from $BASE, NPU runtime: $RUNTIME_NOTE"
started=$(date +%s)
if ! "${BUILD[@]}" "${BUILD_ARGS[@]}" -t "$IMAGE" . > "$WORK/build.log" 2>&1; then
  tail -30 "$WORK/build.log" >&2
  die "Dockerfile.rk did not build (log: $WORK/build.log)."
fi
BUILD_S=$(( $(date +%s) - started ))
[ -n "$SERVER_PID" ] && { kill "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; }
echo "-- build log, last lines:"
grep -E 'npu_runtime:|build_release:|writing image|naming to' "$WORK/build.log" | tail -6 | sed 's/^/   /'

# --- run it as a user would, on the host network, every door on loopback ports of its own
STORAGE=$WORK/smoke-storage
rm -rf "$STORAGE"
.venv/bin/python scripts/device_smoke.py prepare --storage "$STORAGE" 2> "$WORK/prepare.err" \
  || { tail -20 "$WORK/prepare.err" >&2; die "the smoke's bundles could not be made."; }
chown -R 10001:10001 "$STORAGE" 2>/dev/null || chmod -R a+rwX "$STORAGE"
HTTP_PORT=$(free_port); GRPC_PORT=$(free_port); OIP_PORT=$(free_port); REDIS_PORT=$(free_port)
RUN_ARGS=(--network host -e "AISRV_HTTP_PORT=$HTTP_PORT" -e "AISRV_GRPC_ADDRESS=127.0.0.1:$GRPC_PORT"
          -e "AISRV_OIP_GRPC_ADDRESS=127.0.0.1:$OIP_PORT" -e "AISRV_REDIS_PORT=$REDIS_PORT"
          -v "$STORAGE:/var/lib/aiserving/storage" --health-interval 10s)
if emulated_arm64; then
  fake_cpuinfo "$WORK/cpuinfo"
  RUN_ARGS+=(-v "$WORK/cpuinfo:/proc/cpuinfo:ro")
fi
CONTAINER=aisrv-smoke-$$
docker run -d --platform linux/arm64 --name "$CONTAINER" "${RUN_ARGS[@]}" "$IMAGE" >/dev/null
echo "== container $CONTAINER: REST :$HTTP_PORT, gRPC :$GRPC_PORT, waiting for its HEALTHCHECK"
started=$(date +%s)
while :; do
  health=$(docker inspect -f '{{.State.Health.Status}}' "$CONTAINER" 2>/dev/null || echo gone)
  [ "$health" = healthy ] && break
  if [ "$health" = unhealthy ] || [ "$health" = gone ] \
      || [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER")" != true ] \
      || [ $(( $(date +%s) - started )) -gt 900 ]; then
    docker logs --tail 40 "$CONTAINER" >&2 || true
    die "the container did not become healthy (health: $health)."
  fi
  sleep 5
done
HEALTHY_S=$(( $(date +%s) - started ))
echo "   healthy after $HEALTHY_S s"

# --- inside: the pack, the user, memory
inside() { docker exec "$CONTAINER" "$@"; }
SOURCES=$(inside find /opt/aiserving -name '*.py' | sort | tr '\n' ' ')
[ "$SOURCES" = "/opt/aiserving/run.py /opt/aiserving/settings.py " ] \
  || die "the pack holds Python source beyond run.py and settings.py: $SOURCES"
MODULES=$(inside find /opt/aiserving/aiserving -name '*.so' | wc -l)
NODE_UID=$(inside cat /proc/1/status | awk '/^Uid:/ {print $2}')
[ "$NODE_UID" = 10001 ] || die "the node runs as uid $NODE_UID, not 10001."
COMPILED=$(.venv/bin/python -c "import json, urllib.request; print(json.load(urllib.request.urlopen('http://127.0.0.1:$HTTP_PORT/healthz'))['compiled'])")
[ "$COMPILED" = True ] || die "/healthz says compiled: $COMPILED."
RSS_MB=$(inside python -c "import psutil; print(round(sum(p.memory_info().rss for p in psutil.process_iter()) / 2**20))")
PACK_MB=$(inside du -sm /opt/aiserving | cut -f1)
BUILD_INFO=$(inside cat /opt/aiserving/BUILD_INFO.json | tr -d '\n ' )

# --- the smoke: the same bundles and inputs as an x86 node
echo "== device smoke (REST and gRPC, against an x86 node from this checkout)"
.venv/bin/python scripts/device_smoke.py check --storage "$STORAGE" \
  --node-storage /var/lib/aiserving/storage --node "http://127.0.0.1:$HTTP_PORT" \
  --grpc "127.0.0.1:$GRPC_PORT" --redis-port "$REDIS_PORT" \
  --expect-types onnx,tensorflow-lite,rknn 2> "$WORK/smoke.err" | sed 's/^/   /' \
  || { grep -v '^[IWE]0000\|^WARNING: All log\|^To enable' "$WORK/smoke.err" | tail -30 >&2; die "the device smoke failed."; }

SIZE_MB=$(( $(docker image inspect -f '{{.Size}}' "$IMAGE") / 1000000 ))
echo "== Rockchip image $IMAGE (linux/arm64)"
echo "   image size      $SIZE_MB MB (base $(( $(docker image inspect -f '{{.Size}}' "$BASE") / 1000000 )) MB)"
echo "   build time      $BUILD_S s (this run; layers already cached are not rebuilt)"
echo "   pack            $PACK_MB MB, $MODULES compiled modules, .py: run.py and settings.py only; $BUILD_INFO"
echo "   node            uid $NODE_UID, healthy $HEALTHY_S s after start, idle RSS $RSS_MB MB (all processes$(emulated_arm64 && echo ', under QEMU: more than on a board'))"
echo "   NPU runtime     $RUNTIME_NOTE"

# --- Jetson, as far as a substitute base goes
if [ "$JETSON" = yes ]; then
  echo "== Dockerfile.jetson with a substitute base ($BASE, Debian arm64; NVIDIA's L4T r36.4 base is not reachable here)"
  if "${BUILD[@]}" -f Dockerfile.jetson --platform linux/arm64 --network host \
      --build-arg "L4T_IMAGE=$BASE" --target builder -t aiserving-onboard:jetson-substitute . \
      > "$WORK/build-jetson.log" 2>&1; then
    echo "   the builder stage built on the substitute base (not an image for a Jetson)"
  else
    step=$(grep -E '^#[0-9]+ \[builder [0-9]+/[0-9]+\]' "$WORK/build-jetson.log" | tail -1 | cut -c1-150)
    echo "   stopped at: $step"
    grep -E 'ERROR|error:|Could not|No matching|requires a different Python' "$WORK/build-jetson.log" \
      | grep -v '^#[0-9]* [0-9.]* *$' | head -4 | cut -c1-220 | sed 's/^/   /'
    echo "   (log: $WORK/build-jetson.log)"
  fi
fi
echo "== done"
