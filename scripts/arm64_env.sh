# Shared by scripts/build_images.sh and scripts/build_arm64_pack.sh (sourced, not run):
# what running arm64 code on this machine needs, said in one sentence when it is missing,
# and a Debian arm64 root filesystem made from Debian's own packages.

DEBIAN_SUITE=bookworm            # Python 3.11, glibc 2.36: the Rockchip target
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

# True where arm64 binaries run here: natively, or through QEMU registered with binfmt_misc
# with the F flag (the interpreter is opened once, so containers and chroots need no copy).
emulated_arm64() { [ "$(uname -m)" != aarch64 ]; }
need_arm64() {
  [ "$(uname -m)" = aarch64 ] && return 0
  local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
  [ -e "$entry" ] || die "arm64 binaries cannot run here: QEMU is not registered for them (Debian: apt-get install qemu-user-static binfmt-support; if /proc/sys/fs/binfmt_misc is empty, mount it: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc, then update-binfmts --enable qemu-aarch64)."
  grep -q '^enabled' "$entry" || die "QEMU's arm64 entry in binfmt_misc is disabled: update-binfmts --enable qemu-aarch64."
  grep -q '^flags:.*F' "$entry" || die "QEMU's arm64 entry in binfmt_misc lacks the F (fix-binary) flag that containers and chroots need: use Debian's qemu-user-static (its entries have it)."
}

# make_rootfs DIR PACKAGE,...: a minimal Debian arm64 root filesystem with Python, venv and
# this machine's extra CA certificates (pip inside must trust the same proxies pip here does).
make_rootfs() {
  local dir=$1 packages=$2
  command -v debootstrap >/dev/null || die "debootstrap is missing (Debian: apt-get install debootstrap)."
  [ "$(id -u)" -eq 0 ] || die "making a root filesystem with debootstrap needs root."
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  echo "== debootstrap: Debian $DEBIAN_SUITE arm64 into $dir ($packages)"
  debootstrap --arch=arm64 --variant=minbase --include="$packages" \
    "$DEBIAN_SUITE" "$dir" "$DEBIAN_MIRROR" > "$dir.debootstrap.log" 2>&1 \
    || { tail -20 "$dir.debootstrap.log" >&2; die "debootstrap failed (log: $dir.debootstrap.log)."; }
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
    chroot "$dir" update-ca-certificates >/dev/null 2>&1 \
      || die "update-ca-certificates failed in $dir."
  fi
  chroot "$dir" apt-get clean
}

# fake_cpuinfo FILE: an aarch64 /proc/cpuinfo (Cortex-A55 cores, as an RK3588's little
# ones) with as many processors as here. Emulation only: QEMU's user mode shows the
# host's x86 /proc/cpuinfo, on which onnxruntime's CPU probe segfaults at import and
# TF-Lite's inference processes die; a board has its own.
fake_cpuinfo() {
  local file=$1 n
  : > "$file"
  for n in $(seq 0 $(( $(nproc) - 1 ))); do
    printf 'processor\t: %d\nBogoMIPS\t: 48.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x2\nCPU part\t: 0xd05\nCPU revision\t: 0\n\n' "$n" >> "$file"
  done
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
