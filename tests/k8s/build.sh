#!/usr/bin/env bash
# Builds the real Kubernetes control plane from its Go modules, at pinned versions, and caches
# the binaries by version outside the repo: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl and helm. Only what is missing is built; a warm run takes a second.
#
#   bash tests/k8s/build.sh          # build what is missing, print the bin directory
#   RSTORE_K8S_CACHE=DIR ...         # cache somewhere else (default ~/.cache/rstore/k8s)
#
# Needs Go 1.26 or later and the Go module proxy. Nothing here is committed: the binaries land
# in $RSTORE_K8S_CACHE/<component>-<version>/, the Go module and build caches in Go's own.
set -euo pipefail

# ---- pinned versions: change here, once -----------------------------------------------------
# Kubernetes: k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces the staging
# modules with local paths), so a wrapper module requires it and pins each staging module to
# the matching v0.x (k8s/kubernetes.go.mod, with its go.sum).
K8S_VERSION=v1.36.3
# etcd 3.6 (the line kube-apiserver 1.36 is tested with; it needs 3.5.13+ for watch progress).
ETCD_VERSION=v3.6.16
# Helm 4, the current major.
HELM_VERSION=v4.3.2
# ---------------------------------------------------------------------------------------------

here="$(cd "$(dirname "$0")" && pwd)"
cache="${RSTORE_K8S_CACHE:-$HOME/.cache/rstore/k8s}"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export CGO_ENABLED=0

if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: Go is not installed (Go 1.26 or later is needed to build the control plane)" >&2
  exit 1
fi

# One build at a time (tests that build run in parallel): the second waits, then finds the
# binaries the first built.
mkdir -p "$cache"
exec 9>"$cache/.build.lock"
flock 9

k8s_dir="$cache/kubernetes-$K8S_VERSION"
etcd_dir="$cache/etcd-$ETCD_VERSION"
helm_dir="$cache/helm-$HELM_VERSION"

took() { echo "  $1 built in $(( $(date +%s) - $2 )) s" >&2; }

# A wrapper module in a scratch directory: the pinned go.mod and go.sum are copied in, so the
# build never writes into the repo.
wrapper() {
  local name="$1" dir
  dir="$(mktemp -d)"
  cp "$here/$name.go.mod" "$dir/go.mod"
  cp "$here/$name.go.sum" "$dir/go.sum"
  echo "$dir"
}

if [ ! -x "$k8s_dir/kube-apiserver" ] || [ ! -x "$k8s_dir/kube-controller-manager" ] \
  || [ ! -x "$k8s_dir/kube-scheduler" ] || [ ! -x "$k8s_dir/kubectl" ]; then
  echo "building Kubernetes $K8S_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl)" >&2
  t0=$(date +%s)
  w="$(wrapper kubernetes)"
  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  ldflags="-s -w"
  # Without these the servers report v0.0.0, and Helm's kubeVersion checks fail.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  mkdir -p "$k8s_dir.tmp"
  (cd "$w" && go build -trimpath -ldflags "$ldflags" -o "$k8s_dir.tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl)
  rm -rf "$w" "$k8s_dir"
  mv "$k8s_dir.tmp" "$k8s_dir"
  took "Kubernetes" "$t0"
fi

if [ ! -x "$etcd_dir/etcd" ]; then
  echo "building etcd $ETCD_VERSION" >&2
  t0=$(date +%s)
  w="$(wrapper etcd)"
  mkdir -p "$etcd_dir.tmp"
  (cd "$w" && go build -trimpath -ldflags "-s -w" -o "$etcd_dir.tmp/etcd" go.etcd.io/etcd/server/v3)
  rm -rf "$w" "$etcd_dir"
  mv "$etcd_dir.tmp" "$etcd_dir"
  took "etcd" "$t0"
fi

if [ ! -x "$helm_dir/helm" ]; then
  echo "building helm $HELM_VERSION" >&2
  t0=$(date +%s)
  w="$(wrapper helm)"
  mkdir -p "$helm_dir.tmp"
  (cd "$w" && go build -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    -o "$helm_dir.tmp/helm" helm.sh/helm/v4/cmd/helm)
  rm -rf "$w" "$helm_dir"
  mv "$helm_dir.tmp" "$helm_dir"
  took "helm" "$t0"
fi

# One directory on PATH for users and tests: symlinks to the pinned builds.
bin="$cache/bin"
mkdir -p "$bin"
for f in kube-apiserver kube-controller-manager kube-scheduler kubectl; do ln -sfn "$k8s_dir/$f" "$bin/$f"; done
ln -sfn "$etcd_dir/etcd" "$bin/etcd"
ln -sfn "$helm_dir/helm" "$bin/helm"
echo "$bin"
