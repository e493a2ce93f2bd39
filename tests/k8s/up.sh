#!/usr/bin/env bash
# The one command: a real Kubernetes control plane on this machine, with rstore's node agent
# as its kubelet. Builds what is missing first (Kubernetes's components and helm with Go, into
# ~/.cache/rstore/k8s, about 5 minutes the first time; the rstore binaries with cargo), then
# runs until Ctrl-C or SIGTERM, which stop every process it started.
#
#   sudo bash tests/k8s/up.sh [--nodes N] [--dir DIR]     (root: pods get network namespaces)
#
# It prints the KUBECONFIG and PATH to use from another shell; see README, "On a real control
# plane".
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
  echo "up.sh: run as root: every pod gets its own network namespace (ip netns)" >&2
  exit 1
fi
missing=()
for tool in ip nft go cargo; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "up.sh: missing ${missing[*]} (apt-get install iproute2 nftables; Go 1.26+; Rust)" >&2
  exit 1
fi
bin=$(bash tests/k8s/build.sh)
cargo build -q -p node -p operator -p rstore-tests --bin node --bin operator --bin rstore-k8s
exec target/debug/rstore-k8s up --bin-dir "$bin" "$@"
