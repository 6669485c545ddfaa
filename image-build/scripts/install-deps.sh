#!/bin/bash
# Installs the host packages cairn's build, demo and tests need on Debian 12.
# Idempotent: does nothing when everything is already installed.
set -euo pipefail

PKGS=(
  # rootfs and artifacts
  mkosi debootstrap systemd-container erofs-utils cpio zstd dosfstools mtools
  squashfs-tools cryptsetup-bin systemd-boot-efi ovmf kmod
  # disk images: sfdisk, objcopy/objdump (UKIs)
  fdisk binutils
  # guest payloads
  busybox-static libc6-dev gcc
  # Kubernetes from source
  dpkg-dev golang-go rsync jq make golang-github-modern-go-reflect2-dev
  # API-server test tier
  etcd-server
  # Rust -sys crates
  pkg-config libssl-dev
  # signing and git server
  git openssh-client
  # the root tier's git fetch through a real sshd on loopback
  openssh-server
  # PXE
  ipxe-qemu
)
# qemu-system-x86 must come from bookworm-backports (the image carries qemu-utils 10.0).
BPO_PKGS=(qemu-system-x86)

export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

need=()
for p in "${PKGS[@]}" "${BPO_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -eq 0 ] && grep -rqs "deb-src\|Types: deb deb-src" /etc/apt/sources.list.d/cairn-*.sources; then
  echo "install-deps: all packages present"
  exit 0
fi

# bookworm-backports for QEMU 10, and source entries for `apt-get source kubernetes`.
if [ ! -f /etc/apt/sources.list.d/cairn-backports.sources ]; then
  $SUDO tee /etc/apt/sources.list.d/cairn-backports.sources >/dev/null <<'SRC'
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
if [ ! -f /etc/apt/sources.list.d/cairn-src.sources ]; then
  $SUDO tee /etc/apt/sources.list.d/cairn-src.sources >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${PKGS[@]}"
$SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports "${BPO_PKGS[@]}"
echo "install-deps: done"
