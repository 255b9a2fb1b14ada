#!/usr/bin/env bash
# Install, only if missing, the Debian packages `make image` and the system
# tests need, and make sure arm64 binaries run through binfmt (qemu-user).
# Idempotent: a second run installs nothing and prints one line.
set -euo pipefail

PACKAGES=(
  qemu-user-static binfmt-support qemu-system-arm qemu-utils
  mmdebstrap u-boot-qemu u-boot-tools dosfstools mtools e2fsprogs fdisk
  zstd busybox ca-certificates arch-test libubootenv-tool
  netcat-openbsd  # the system tests' guestfwd: one nc per guest connection to a loopback port
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "host-deps: error: missing packages ${missing[*]} and not root (run: sudo $0)" >&2
    exit 1
  fi
  echo "host-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -qq >/dev/null
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# binfmt_misc: arm64 programs inside the rootfs chroot run through qemu-aarch64.
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || {
    echo "host-deps: error: cannot mount binfmt_misc (needs root and a kernel with binfmt_misc)" >&2
    exit 1
  }
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi
if ! grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
  echo "host-deps: error: qemu-aarch64 binfmt handler is not enabled (update-binfmts --enable qemu-aarch64)" >&2
  exit 1
fi
echo "host-deps: ok (${#PACKAGES[@]} packages present, qemu-aarch64 binfmt enabled)" >&2
