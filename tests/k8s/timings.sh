#!/usr/bin/env bash
# Lifecycle timings on the real control plane, as a user sees them through kubectl: create ->
# Available, 3 -> 5 voters, a kill -9 of the leader's process healed, a lost disk (PVC and pod
# deleted) replaced by a new member. Needs a running plane (tests/k8s/up.sh) with the operator
# installed (helm install), and no store named `timing` in the default namespace.
#
#   bash tests/k8s/timings.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${RSTORE_K8S_DIR:-/tmp/rstore-k8s}
export KUBECONFIG=$dir/kubeconfig
S=timing
t() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(t)" 'BEGIN { printf "%.1f s", b - a }'; }
wait_for() { local d=$((SECONDS + 300)); until ("$@") >/dev/null 2>&1; do [ $SECONDS -lt $d ] || { echo "timed out: $*" >&2; exit 1; }; sleep 0.2; done; }
converged() {
  kubectl get rstore "$S" -o json | jq -e --argjson v "$1" '.status as $s
    | ($s.observedGeneration // -1) == .metadata.generation and $s.phase == "Available"
    and ([$s.members[]? | select(.role == "voter")] | length) == $v
    and ([$s.members[]? | select(.healthy | not)] | length) == 0
    and ($s.readyReplicas // 0) == $v and (($s.leader // "") != "")'
}
st() { kubectl get rstore "$S" -o json | jq -r ".status$1"; }

kubectl apply -f - >/dev/null <<EOF2
apiVersion: rstore.dev/v1alpha1
kind: ReplicatedStore
metadata: {name: $S}
spec: {replicas: 3}
EOF2
a=$(t); kubectl wait --for=condition=Available "rstore/$S" --timeout=300s >/dev/null; wait_for converged 3
echo "create -> Available (3 voters):       $(since "$a")"

a=$(t); kubectl scale rstore "$S" --replicas=5 >/dev/null; sleep 0.5; wait_for converged 5
echo "scale 3 -> 5 (all voters healthy):    $(since "$a")"

leader=$(st .leader)
restarts=$(kubectl get pod "$leader" -o jsonpath='{.status.containerStatuses[0].restartCount}')
a=$(t); kill -9 "$(cat "$dir/pods/default/$leader/node.pid")"
restarted() { [ "$(kubectl get pod "$leader" -o jsonpath='{.status.containerStatuses[0].restartCount}')" -gt "$restarts" ]; }
wait_for restarted; wait_for converged 5
echo "kill -9 of the leader, healed:        $(since "$a")"

victim=$(kubectl get rstore "$S" -o json | jq -r --arg l "$(st .leader)" '[.status.members[] | select(.pod != $l) | .pod] | first')
old_id=$(kubectl get rstore "$S" -o json | jq -r --arg p "$victim" '.status.members[] | select(.pod == $p) | .nodeId')
a=$(t); kubectl delete pvc "data-$victim" --wait=false >/dev/null; kubectl delete pod "$victim" --wait=false >/dev/null
replaced() {
  kubectl get rstore "$S" -o json | jq -e --arg p "$victim" --arg old "$old_id" '
    ([.status.members[] | select(.pod == $p and .nodeId != $old and .healthy)] | length) == 1
    and ([.status.members[] | select(.nodeId == $old)] | length) == 0' && converged 5
}
wait_for replaced
echo "lost disk (PVC + pod), new member in: $(since "$a")"
kubectl delete rstore "$S" --wait=true >/dev/null
kubectl delete pvc -l "app.kubernetes.io/instance=$S" --wait=false >/dev/null 2>&1 || true
