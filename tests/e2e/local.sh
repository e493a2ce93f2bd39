#!/usr/bin/env bash
# The end-to-end scenarios (tests/e2e/scenarios.sh) against the real control plane on this
# machine, started with `bash tests/k8s/up.sh` (or by `cargo test`, tests/tests/k8s_e2e.rs).
#
#   bash tests/e2e/local.sh
#
# Environment:
#   RSTORE_K8S_DIR=/tmp/rstore-k8s   the running plane's directory (kubeconfig, hosts, pods/)
#   NODE_BIN=target/debug/node        the node CLI (the same binary the pods run)
#   E2E_TIMEOUT=180                   seconds for each wait
#   BACKUP_S3_ENDPOINT=http://IP:PORT an S3 API server the pods reach (moto on the plane's
#                                     bridge, as tests/tests/k8s_e2e.rs starts it); without
#                                     it the backup scenario is skipped, saying so
#
# The node CLI runs on this machine and reaches pods and Services by name through the plane's
# hosts file, with the CA and token from the store's Secrets, as a user outside the cluster
# would with a VPN or port-forward. kill -9 goes to the member's process, whose pid the node
# agent keeps in pods/<ns>/<pod>/node.pid.
set -euo pipefail
cd "$(dirname "$0")/../.."

RSTORE_K8S_DIR=${RSTORE_K8S_DIR:-/tmp/rstore-k8s}
export KUBECONFIG=$RSTORE_K8S_DIR/kubeconfig
[ -f "$KUBECONFIG" ] || { echo "no control plane in $RSTORE_K8S_DIR: start one with bash tests/k8s/up.sh" >&2; exit 1; }
NODE_BIN=$(realpath "${NODE_BIN:-target/debug/node}")
TIMEOUT=${E2E_TIMEOUT:-180}
for tool in kubectl helm jq; do
  command -v "$tool" >/dev/null || { echo "$tool is required (tests/k8s/up.sh puts kubectl and helm on PATH)" >&2; exit 1; }
done
# The agent runs any tag of these repositories (tests/src/k8s/agent/mod.rs, ImageMap).
NODE_IMAGE_NEXT=ghcr.io/rstore/node:0.1.0-e2e-next
OPERATOR_IMAGE=ghcr.io/rstore/operator:0.1.0
NS=rstore-e2e
SERVICE_URL="https://basic.$NS.svc:7379"
STORAGE_PROVISIONER=rstore.dev/local-dir
CA_FILE=$(mktemp -t rstore-e2e-ca.XXXXXX)

member_url() { echo "https://$1.basic-peer.$NS.svc:7379"; }
node_cli() {
  [ -s "$CA_FILE" ] || kubectl -n "$NS" get secret basic-credentials -o jsonpath='{.data.ca\.crt}' | base64 -d >"$CA_FILE"
  RSTORE_HOSTS_FILE=$RSTORE_K8S_DIR/hosts RSTORE_CACERT=$CA_FILE "$NODE_BIN" "$@"
}
kill_member() { kill -9 "$(cat "$RSTORE_K8S_DIR/pods/$NS/$1/node.pid")"; }

# The backup scenario's object store: a bucket on the S3 server, and a Secret with its
# settings (moto checks no signature, so any key works).
BACKUP_URL=
if [ -n "${BACKUP_S3_ENDPOINT:-}" ]; then
  curl -fsS -X PUT "$BACKUP_S3_ENDPOINT/rstore-e2e" >/dev/null
  BACKUP_URL=s3://rstore-e2e/backups
fi
backup_secret() {
  kubectl -n "$NS" create secret generic "$1" \
    --from-literal=AWS_ACCESS_KEY_ID=e2e --from-literal=AWS_SECRET_ACCESS_KEY=e2e \
    --from-literal=AWS_REGION=us-east-1 --from-literal=AWS_ENDPOINT="$BACKUP_S3_ENDPOINT" \
    --from-literal=AWS_ALLOW_HTTP=true --dry-run=client -o yaml | kubectl apply -f - >/dev/null
}

diagnostics() {
  {
    kubectl get nodes -o wide
    kubectl get rstore,statefulsets,pods,pvc,pv,services,pdb,leases -A -o wide
    kubectl -n "$NS" get rstore -o yaml
    kubectl -n "$NS" get backups,backupschedules,configmaps -o yaml
    kubectl get events -A --sort-by=.lastTimestamp | tail -n 60
  } 2>&1 | tail -n 120 >&2 || true
  for f in "$RSTORE_K8S_DIR"/pods/rstore-system/*/operator.log; do
    echo "--- $f (last 40 lines)" >&2
    tail -n 40 "$f" | cut -c1-400 >&2 || true
  done
  echo "--- $RSTORE_K8S_DIR/logs/agent.log (last 40 lines)" >&2
  tail -n 40 "$RSTORE_K8S_DIR/logs/agent.log" >&2 || true
}
finish() {
  local rc=$?
  trap - EXIT
  stop_writer_quietly 2>/dev/null || true
  [ "$rc" -eq 0 ] || diagnostics
  rm -f "$CA_FILE"
  echo "e2e scenarios: ${STEPS_PASSED:-0} steps passed$([ "$rc" -eq 0 ] || echo ", then one failed")"
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

# shellcheck source=tests/e2e/scenarios.sh
source tests/e2e/scenarios.sh
