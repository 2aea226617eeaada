#!/usr/bin/env bash
# Installs what vdeno and its tests need on a Debian machine: npm if missing,
# Deno from the npm registry, and the real VDE peers and network tools from
# Debian. Safe to run again: it installs only what is missing. Needs root.
set -euo pipefail

packages=(
  vdeplug libvdeplug2 vdens libvdeplug-agno randmac   # the reference peers
  vde2 libvdeplug-slirp libvdeplug-vlan               # the VDE family: vde_switch, slirp://, vlan://
  qemu-system-x86 busybox-static cpio xz-utils kmod    # the VM of the end-to-end test
  linux-image-cloud-amd64
  iproute2 iputils-ping iperf3 tcpdump tshark ethtool  # hosts, traffic and captures
  procps psmisc util-linux bsdutils curl socat         # curl scrapes metrics, socat hears sd_notify
  git                                                  # vdeno --version names the commit
)

if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap: run as root (sudo bash tools/bootstrap.sh): it installs Debian packages" >&2
  exit 1
fi

if ! command -v deno >/dev/null 2>&1; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "bootstrap: installing npm from Debian, to fetch Deno from the npm registry"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  echo "bootstrap: installing Deno from the npm registry"
  npm install -g deno >/dev/null
fi
deno --version | head -n 1

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -e /dev/net/tun ] || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200; }
echo "bootstrap: ready"
