#!/usr/bin/env bash
# deps.sh makes sure the system programs mesh's build, tests and demo need are
# installed. As root on Debian it installs what is missing; otherwise it stops
# and names what to install.
set -euo pipefail

# command -> Debian package
declare -A need=(
  [etcd]=etcd-server
  [iptables]=iptables
  [nft]=nftables
  [ip]=iproute2
  [tcpdump]=tcpdump
  [openssl]=openssl
  [nsenter]=util-linux
)

# The local cluster's kube-proxy needs bridged pod traffic to pass through
# netfilter, so that a Service's replies between two pods on the bridge are
# un-NATed (br_netfilter's default is 1; some machines turn it off).
bnf=/proc/sys/net/bridge/bridge-nf-call-iptables
if [ -w "$bnf" ] && [ "$(cat "$bnf")" != 1 ]; then
  echo "deps: setting net.bridge.bridge-nf-call-iptables=1 (kube-proxy on the local cluster's bridge needs it)" >&2
  echo 1 > "$bnf"
fi

missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/sbin/$cmd" ] || missing+=("${need[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts etcd as a service on install; the local cluster runs its own.
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now etcd >/dev/null 2>&1 || true; fi
  pkill -x etcd -U 0 --parent 1 >/dev/null 2>&1 || true
  exit 0
fi

echo "deps: missing packages: ${missing[*]}" >&2
echo "deps: install them with: sudo apt-get install -y ${missing[*]}" >&2
exit 1
