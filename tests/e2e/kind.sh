#!/usr/bin/env bash
# End-to-end test of rstore on a throwaway kind cluster. One script does it all:
#   1. creates a kind cluster of one control-plane and 5 worker nodes (its own kubeconfig
#      file; yours is never touched);
#   2. builds the node and operator images (make images) and loads them into kind;
#   3. runs the scenarios every cluster runs, tests/e2e/scenarios.sh (the same list that
#      tests/e2e/local.sh runs on the real control plane here), with a client pod inside the
#      cluster for the node CLI and crictl for kill -9;
#   4. cleans up (deletes the kind cluster) on success and on failure, after printing
#      diagnostics on failure.
#
# Needs: docker, kind, kubectl, helm (3.8+ or 4), jq, make. Run from anywhere:
#   bash tests/e2e/kind.sh            (or: make e2e)
# Environment:
#   KIND_CLUSTER=rstore-e2e   name of the kind cluster (must not exist yet)
#   KIND_NODE_IMAGE=          kindest/node image to use (default: kind's own)
#   NODE_IMAGE, OPERATOR_IMAGE  default: the names in the Makefile
#   SKIP_BUILD=1              reuse images already built locally
#   KEEP_CLUSTER=1            leave the cluster (and print how to reach it) at the end
#   E2E_TIMEOUT=600           seconds for each wait
#   E2E_ARTIFACTS=            directory for diagnostics on failure (default: a temp dir)
#
# This script has not been run in the development sandbox (no Docker engine, no cluster);
# .github/workflows/e2e.yml runs it on GitHub's Ubuntu runners.
set -euo pipefail
cd "$(dirname "$0")/../.."

KIND_CLUSTER=${KIND_CLUSTER:-rstore-e2e}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
TIMEOUT=${E2E_TIMEOUT:-600}
NS=rstore-e2e
OPERATOR_NS=rstore-system
RELEASE=rstore-operator
# NODE_IMAGE, OPERATOR_IMAGE and VERSION from the Makefile (environment values win there).
eval "$(make -s --no-print-directory print-images)"
NODE_IMAGE_NEXT="${NODE_IMAGE%:*}:${VERSION}-e2e-next"

log() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm jq make; do
  command -v "$tool" >/dev/null || fail "$tool is required"
done

# Own kubeconfig, so that the script never changes the user's current context.
KUBECONFIG="$(mktemp -d -t rstore-e2e-kube.XXXXXX)/kubeconfig"
export KUBECONFIG
ARTIFACTS=${E2E_ARTIFACTS:-$(mktemp -d -t rstore-e2e-artifacts.XXXXXX)}
mkdir -p "$ARTIFACTS"
CREATED_CLUSTER=0

diagnostics() {
  echo "collecting diagnostics in $ARTIFACTS" >&2
  {
    kubectl get nodes -o wide
    kubectl get rstore,statefulsets,pods,pvc,services,pdb -A -o wide
    kubectl -n "$NS" get rstore -o yaml
    kubectl -n "$NS" describe rstore
    kubectl get events -A --sort-by=.lastTimestamp
  } >"$ARTIFACTS/cluster.txt" 2>&1 || true
  kubectl -n "$OPERATOR_NS" logs -l app.kubernetes.io/component=operator --all-containers \
    --prefix --tail=-1 >"$ARTIFACTS/operator.log" 2>&1 || true
  for pod in $(kubectl -n "$NS" get pods -l app.kubernetes.io/name=rstore -o name 2>/dev/null); do
    kubectl -n "$NS" logs "$pod" -c node --tail=500 >"$ARTIFACTS/${pod#pod/}.log" 2>&1 || true
    kubectl -n "$NS" logs "$pod" -c node --previous --tail=500 \
      >"$ARTIFACTS/${pod#pod/}.previous.log" 2>/dev/null || true
  done
  tail -n 60 "$ARTIFACTS/cluster.txt" >&2 || true
  echo "--- operator log (last 80 lines)" >&2
  tail -n 80 "$ARTIFACTS/operator.log" >&2 || true
}

cleanup() {
  local rc=$?
  trap - EXIT
  if [ "$rc" -ne 0 ] && [ "$CREATED_CLUSTER" = 1 ]; then
    diagnostics
  fi
  if [ "$CREATED_CLUSTER" = 1 ]; then
    if [ "$KEEP_CLUSTER" = 1 ]; then
      echo "kept kind cluster $KIND_CLUSTER; KUBECONFIG=$KUBECONFIG"
    else
      kind delete cluster --name "$KIND_CLUSTER" >/dev/null 2>&1 || true
      rm -rf "$(dirname "$KUBECONFIG")"
    fi
  fi
  echo "e2e: ${STEPS_PASSED:-0} passed, $([ "$rc" -eq 0 ] && echo 0 || echo 1) failed"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
log "kind cluster $KIND_CLUSTER"
if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
  fail "kind cluster $KIND_CLUSTER already exists; delete it or set KIND_CLUSTER"
fi
CREATED_CLUSTER=1
# examples/production.yaml spreads 5 members over 5 nodes (required anti-affinity).
kind create cluster --name "$KIND_CLUSTER" --kubeconfig "$KUBECONFIG" --wait 180s \
  ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --config - <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
  - role: worker
  - role: worker
  - role: worker
  - role: worker
EOF
kubectl version
echo "ok   kind cluster is up"

log "images"
if [ "$SKIP_BUILD" != 1 ]; then
  make images NODE_IMAGE="$NODE_IMAGE" OPERATOR_IMAGE="$OPERATOR_IMAGE" VERSION="$VERSION"
fi
# The rolling change needs a second tag; the same bits are enough to prove the rolling
# restart keeps every member's identity and data.
docker tag "$NODE_IMAGE" "$NODE_IMAGE_NEXT"
for image in "$NODE_IMAGE" "$OPERATOR_IMAGE"; do
  uid=$(docker image inspect "$image" --format '{{.Config.User}}')
  case $uid in 65532 | 65532:65532) ;; *) fail "$image runs as '$uid', want 65532" ;; esac
done
kind load docker-image --name "$KIND_CLUSTER" "$NODE_IMAGE" "$NODE_IMAGE_NEXT" "$OPERATOR_IMAGE"
echo "ok   images built, non-root, and loaded into kind"

# ---- the hooks tests/e2e/scenarios.sh needs ----------------------------------------------------
SERVICE_URL="https://basic.$NS.svc:7379"
STORAGE_PROVISIONER=rancher.io/local-path
member_url() { echo "https://$1.basic-peer.$NS.svc:7379"; }

# The node CLI runs in a client pod inside the cluster (the image is distroless: no shell, so
# the pod keeps a throwaway uninitialized node serving on loopback to stay up), with the
# store's CA mounted; RSTORE_ENDPOINT and RSTORE_TOKEN become flags, as kubectl exec cannot set
# variables.
CLIENT_POD=e2e-client
client_pod() {
  kubectl -n "$NS" get pod "$CLIENT_POD" >/dev/null 2>&1 && return 0
  kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $CLIENT_POD, labels: {app.kubernetes.io/name: rstore-e2e-client}}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
  volumes:
    - {name: creds, secret: {secretName: basic-credentials, optional: true}}
    - {name: scratch, emptyDir: {}}
  containers:
    - name: client
      image: $NODE_IMAGE
      args: [serve, --data-dir=/scratch/node, --listen-client=127.0.0.1:17379,
             --advertise-client=http://127.0.0.1:17379, --listen-peer=127.0.0.1:17380,
             --advertise-peer=http://127.0.0.1:17380, --insecure-plaintext]
      volumeMounts:
        - {name: creds, mountPath: /creds, readOnly: true}
        - {name: scratch, mountPath: /scratch}
EOF
  kubectl -n "$NS" wait --for=condition=Ready "pod/$CLIENT_POD" --timeout=180s >/dev/null
}
node_cli() {
  client_pod
  kubectl -n "$NS" exec "$CLIENT_POD" -c client -- node "$@" --cacert /creds/ca.crt \
    ${RSTORE_ENDPOINT:+--endpoint "$RSTORE_ENDPOINT"} ${RSTORE_TOKEN:+--token "$RSTORE_TOKEN"}
}

# SIGKILL the node process of a pod, from its kind node (a container), through crictl.
kill_member() {
  local node cid pid
  node=$(kubectl -n "$NS" get pod "$1" -o jsonpath='{.spec.nodeName}')
  cid=$(docker exec "$node" crictl ps -q --name node --label "io.kubernetes.pod.name=$1" \
    --label "io.kubernetes.pod.namespace=$NS")
  pid=$(docker exec "$node" crictl inspect --output go-template --template '{{.info.pid}}' "$cid")
  docker exec "$node" kill -9 "$pid"
}

# shellcheck source=tests/e2e/scenarios.sh
source tests/e2e/scenarios.sh
