#!/usr/bin/env bash
# Installs the Debian packages kaji's build and tests need. Idempotent; run as root.
set -euo pipefail
packages=(curl ca-certificates openssl protobuf-compiler)
# gcc builds the embedded pause program; containerd, runc and the CNI plugins run pods;
# busybox-static goes into the test images scripts/build-image.sh assembles.
packages+=(gcc containerd runc containernetworking-plugins busybox-static)
# The CNI bridge plugin masquerades with iptables; the service proxy uses nftables.
packages+=(iptables nftables iproute2 kmod conntrack)
# The DNS tests query the cluster DNS with a real client (dig).
packages+=(bind9-dnsutils)
# tests/dns.rs runs a tiny upstream resolver with python3 (any python3 on PATH will do).
command -v python3 >/dev/null || packages+=(python3-minimal)
# tests/registry.rs serves images from a local registry, pushed with skopeo.
packages+=(docker-registry skopeo apache2-utils)
# tests/clients.rs drives kaji with the official Python client (run by /usr/bin/python3).
packages+=(python3-kubernetes)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v kubectl >/dev/null || echo "warning: kubectl not found on PATH; the kubectl integration tests need it" >&2
