# shellcheck shell=bash
# The end-to-end scenarios: one list, run on any cluster by a driver that sources this file.
#   tests/e2e/local.sh   the real control plane on this machine (rstore-k8s up), run by
#                        `cargo test` (tests/tests/k8s_e2e.rs) and by hand;
#   tests/e2e/kind.sh    a throwaway kind cluster, where Docker is.
#
# The user's path, with kubectl and helm only: helm install; kubectl apply -f every example
# and kubectl wait for Available; reads and writes with the user Secret's credentials; kubectl
# scale 3 -> 5 -> 3 (the scale subresource) with the operator's leader pod deleted in the
# middle; kill -9 of a member's process (then kubectl logs, --previous, and the pod's Events);
# kubectl delete pod of the leader; a lost disk (PVC and pod deleted); eviction through the
# Eviction API against the PDB; quorum -> sync -> quorum; a rolling image change; invalid
# specs refused by the API server with the CEL message; pause and resume; kubectl delete of
# the store (garbage collection, PVCs per policy); helm upgrade and helm uninstall. A
# background writer runs from the first Available to the deletion, and
# every write it saw acknowledged must read back at the end.
#
# The driver sets, before sourcing:
#   NODE_IMAGE, NODE_IMAGE_NEXT, OPERATOR_IMAGE   images (the next one for the rolling change)
#   TIMEOUT                                       seconds for each wait
#   SERVICE_URL                                   the store's client Service as a client sees it
#   STORAGE_PROVISIONER                           the provisioner of the cluster's default class
#   BACKUP_URL                                    an object store URL the pods reach, or empty
#                                                 (the backup scenario is then skipped)
# and defines these functions:
#   member_url POD          the client URL that reaches POD itself
#   node_cli ARGS...        the node CLI with RSTORE_CACERT set, run where the store is reachable
#   kill_member POD         SIGKILL the store process of POD (not the pod: its container)
#   diagnostics             print what helps on failure
#   backup_secret NAME      create Secret NAME with BACKUP_URL's credentials
set -euo pipefail

NS=${NS:-rstore-e2e}
OPERATOR_NS=${OPERATOR_NS:-rstore-system}
RELEASE=${RELEASE:-rstore-operator}
STORE=basic
STEPS_PASSED=0

log() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }
pass() { STEPS_PASSED=$((STEPS_PASSED + 1)); printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*" >&2; exit 1; }

k() { kubectl -n "$NS" "$@"; }

# wait_until DESCRIPTION COMMAND...: retry COMMAND every 2 s until it succeeds or TIMEOUT.
# COMMAND runs in a subshell, so a `fail` inside it fails that attempt, not the script.
wait_until() {
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until ("$@") >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${TIMEOUT}s waiting for: $what"
    sleep 2
  done
}

status() { k get rstore "$STORE" -o json | jq -r ".status$1"; }

# converged VOTERS [LEARNERS]: the operator has seen the latest spec, and the cluster has
# exactly that shape, every member healthy, a leader, phase Available and condition Available.
converged() {
  k get rstore "$STORE" -o json | jq -e --argjson v "$1" --argjson l "${2:-0}" '
    .status as $s
    | ($s.observedGeneration // -1) == .metadata.generation
      and $s.phase == "Available"
      and ([$s.conditions[]? | select(.type == "Available" and .status == "True")] | length) == 1
      and ([$s.members[]? | select(.role == "voter")] | length) == $v
      and ([$s.members[]? | select(.role == "learner")] | length) == $l
      and ([$s.members[]? | select(.healthy | not)] | length) == 0
      and ($s.readyReplicas // 0) == ($v + $l)
      and (($s.leader // "") != "")'
}

wait_converged() {
  wait_until "$STORE converged to $1 voters and ${2:-0} learners" converged "$@"
  pass "$STORE is Available with $1 voters (leader $(status .leader), term $(status .term))"
}

secret_value() { k get secret "$1" -o jsonpath="{.data.$2}" | base64 -d; }
# The user credential the operator wrote for the store: a write token.
user_token() { secret_value "$STORE-credentials" token; }
# The operator's own admin token (for the admin API's view of the cluster).
admin_token() { secret_value "$STORE-operator" token; }

# The node CLI as the store's user, against POD itself (member) or the client Service (client).
member() { local pod=$1; shift; RSTORE_ENDPOINT=$(member_url "$pod") RSTORE_TOKEN=$(user_token) node_cli "$@"; }
client() { RSTORE_ENDPOINT=$SERVICE_URL RSTORE_TOKEN=$(user_token) node_cli "$@"; }
admin() { RSTORE_ENDPOINT=$SERVICE_URL RSTORE_TOKEN=$(admin_token) node_cli "$@"; }

# Keys written so far and their values; check_data reads every one back.
declare -A DATA=()
put_keys() {
  local prefix=$1 n=$2 i
  for i in $(seq 1 "$n"); do
    client kv put "$prefix/$i" "value-$prefix-$i" >/dev/null || fail "put $prefix/$i through the client Service"
    DATA["$prefix/$i"]="value-$prefix-$i"
  done
}
# check_data [POD [CONSISTENCY]]: every key reads back its value, through the client Service
# by default, or from POD's own state (stale reads, to prove that member has the data).
check_data() {
  local pod=${1:-} consistency=${2:-linearizable} key got
  for key in "${!DATA[@]}"; do
    if [ -n "$pod" ]; then
      got=$(member "$pod" kv get "$key" --consistency "$consistency" 2>/dev/null) || fail "read $key ($pod, $consistency)"
    else
      got=$(client kv get "$key" --consistency "$consistency" 2>/dev/null) || fail "read $key (client Service)"
    fi
    [ "$got" = "${DATA[$key]}" ] || fail "$key is '$got', want '${DATA[$key]}' (${pod:-client Service})"
  done
  pass "all ${#DATA[@]} keys read back (${pod:-client Service}, $consistency)"
}
check_member_data() {
  wait_until "$1 to have every key" check_data "$1" stale
  check_data "$1" stale
}

# ---- the background writer ------------------------------------------------------------------
# Writes bg/N through the client Service as fast as the CLI goes; N goes to $WRITER_DIR/acked
# only once the store acknowledged it. Failures (a member restarting under it) are counted,
# never retried as the same key, so every acknowledged key must read back exactly.
WRITER_DIR=$(mktemp -d -t rstore-e2e-writer.XXXXXX)
WRITER_PID=
start_writer() {
  (
    i=0
    while [ ! -e "$WRITER_DIR/stop" ]; do
      i=$((i + 1))
      if client kv put "bg/$i" "bg-$i" >/dev/null 2>>"$WRITER_DIR/errors"; then
        echo "$i" >>"$WRITER_DIR/acked"
      else
        echo "$i" >>"$WRITER_DIR/failed"
      fi
      sleep 0.1
    done
  ) &
  WRITER_PID=$!
}
check_writer() {
  touch "$WRITER_DIR/stop"
  wait "$WRITER_PID" || true
  local acked failed missing
  acked=$(wc -l <"$WRITER_DIR/acked" 2>/dev/null || echo 0)
  failed=$(wc -l <"$WRITER_DIR/failed" 2>/dev/null || echo 0)
  [ "$acked" -gt 0 ] || fail "the background writer had no write acknowledged"
  # Every acknowledged key with its value, against one listing of the prefix.
  client kv list --prefix bg/ --limit 10000000 | sort >"$WRITER_DIR/listed" || fail "cannot list bg/"
  sed 's|.*|bg/&	bg-&|' "$WRITER_DIR/acked" | sort >"$WRITER_DIR/expected"
  missing=$(comm -23 "$WRITER_DIR/expected" "$WRITER_DIR/listed" | wc -l)
  comm -23 "$WRITER_DIR/expected" "$WRITER_DIR/listed" | head -5 | sed 's/^/     lost: /' >&2
  [ "$missing" = 0 ] || fail "$missing of $acked acknowledged background writes lost"
  pass "background writer: $acked writes acknowledged, all read back; $failed refused or timed out while members changed"
}
stop_writer_quietly() { touch "$WRITER_DIR/stop"; [ -z "$WRITER_PID" ] || wait "$WRITER_PID" 2>/dev/null || true; }

# ---------------------------------------------------------------------------------------------
log "install the chart (2 operator replicas)"
helm upgrade --install "$RELEASE" charts/rstore-operator \
  --namespace "$OPERATOR_NS" --create-namespace \
  --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" \
  --set replicaCount=2 --set logFormat=text --wait --timeout 5m
kubectl wait --for=condition=Established crd/replicatedstores.rstore.dev --timeout=60s
spec_fields='.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties | keys'
[ "$(kubectl get crd replicatedstores.rstore.dev -o json | jq -c "$spec_fields")" = \
  "$(kubectl create --dry-run=client -f crds/replicatedstore.yaml -o json | jq -c "$spec_fields")" ] \
  || fail "the installed CRD is not crds/replicatedstore.yaml"
kubectl -n "$OPERATOR_NS" rollout status deployment/"$RELEASE" --timeout=180s
lease_holder() { kubectl -n "$OPERATOR_NS" get lease rstore-operator -o jsonpath='{.spec.holderIdentity}'; }
wait_until "the operator to hold its Lease" bash -c "[ -n \"\$(kubectl -n $OPERATOR_NS get lease rstore-operator -o jsonpath='{.spec.holderIdentity}')\" ]"
pass "operator installed by Helm, CRD established, Lease held by $(lease_holder)"

# ---------------------------------------------------------------------------------------------
log "admission: every example is accepted, bad specs are refused with their message"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
for f in examples/*.yaml; do
  k apply --dry-run=server -f "$f" >/dev/null || fail "the API server rejects $f"
done
for f in replicas-zero unknown-mode typo-field raft-timing empty-image long-name issuer-kind wrong-quantity; do
  if out=$(k apply --dry-run=server -f "tests/manifests/invalid/$f.yaml" 2>&1); then
    fail "the API server accepts tests/manifests/invalid/$f.yaml"
  fi
  printf '     %s: %s\n' "$f" "$(tail -n 1 <<<"$out" | cut -c1-160)"
done
out=$(k apply --dry-run=server -f tests/manifests/invalid/replicas-zero.yaml 2>&1 || true)
grep -q "replicas must be between 1 and 9" <<<"$out" || fail "no CEL message for replicas 0: $out"
pass "every example admitted; 8 invalid specs refused by the API server (CEL message for replicas 0)"

# ---------------------------------------------------------------------------------------------
log "kubectl apply -f every example, kubectl wait for Available"
# As examples/production.yaml says to: storage nodes labelled, zones on the Nodes, and the
# StorageClass it names (here with the cluster's own provisioner).
i=0
for n in $(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o name | head -n 5); do
  kubectl label --overwrite "$n" node-role.example.com/storage=true >/dev/null
  [ -n "$(kubectl get "$n" -o jsonpath='{.metadata.labels.topology\.kubernetes\.io/zone}')" ] \
    || kubectl label "$n" "topology.kubernetes.io/zone=zone-$((i % 3))" >/dev/null
  i=$((i + 1))
done
[ "$i" = 5 ] || fail "examples/production.yaml needs 5 schedulable Nodes; this cluster has $i"
kubectl get storageclass fast-ssd >/dev/null 2>&1 || kubectl apply -f - <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: fast-ssd}
provisioner: $STORAGE_PROVISIONER
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF
for f in examples/*.yaml; do k apply -f "$f"; done
for rs in $(k get rstore -o name); do
  k wait --for=condition=Available "$rs" --timeout="${TIMEOUT}s"
done
# Available means the client Service routes: a request right after the wait must work.
out=$(client kv put e2e/greeting hello) || fail "put through the client Service right after Available"
grep -q '"revision"' <<<"$out" || fail "put through the client Service right after Available: $out"
DATA[e2e/greeting]=hello
k get rstore
k get rstore -o json | jq -e '.items | all(.status.phase == "Available" and (.status.leader // "") != "")' >/dev/null \
  || fail "kubectl get rstore does not show every store Available with a leader"
pass "every example Available; kubectl get rstore shows replicas, ready, leader, mode and phase"
for rs in $(k get rstore -o name); do
  [ "$rs" = "replicatedstore.rstore.dev/$STORE" ] || k delete "$rs" --wait=false
done
start_writer

log "what the operator created for $STORE"
wait_converged 3
CLUSTER_ID=$(status .clusterId)
[ -n "$CLUSTER_ID" ] && [ "$CLUSTER_ID" != null ] || fail "no clusterId in status"
k get statefulset "$STORE" >/dev/null
[ "$(k get service "$STORE-peer" -o jsonpath='{.spec.clusterIP} {.spec.publishNotReadyAddresses}')" = "None true" ] \
  || fail "$STORE-peer is not a headless Service publishing not-ready addresses"
[ "$(k get service "$STORE" -o jsonpath='{.spec.ports[?(@.name=="client")].port}')" = 7379 ] \
  || fail "client Service $STORE does not expose 7379"
[ "$(k get pdb "$STORE" -o jsonpath='{.spec.maxUnavailable}')" = 1 ] || fail "PDB $STORE is not maxUnavailable 1"
for s in "$STORE-ca" "$STORE-tls" "$STORE-operator" "$STORE-credentials"; do
  k get secret "$s" >/dev/null || fail "no Secret $s"
done
[ "$(k get pod "$STORE-0" -o jsonpath='{.spec.automountServiceAccountToken}')" = false ] \
  || fail "member pods mount a service-account token"
# (Captured first: under pipefail, `cmd | grep -q` fails on the refusal it is looking for.)
out=$(RSTORE_ENDPOINT=$SERVICE_URL node_cli kv get e2e/greeting 2>&1 || true)
grep -q 401 <<<"$out" || fail "a request without a token was not refused with 401: $out"
out=$(client cluster status 2>&1 || true)
grep -q 403 <<<"$out" || fail "the user token (write) reached the admin API: $out"
pass "StatefulSet, Services, PDB, Secrets; 401 without a token, 403 for admin calls with the user token"

log "write and read with the user Secret's credentials"
[ "$(client kv get e2e/greeting)" = hello ] || fail "get through the client Service"
put_keys initial 10
check_data
for i in 0 1 2; do check_member_data "$STORE-$i"; done

# ---------------------------------------------------------------------------------------------
if [ -n "${BACKUP_URL:-}" ]; then
  log "backups: a Backup under write load, a BackupSchedule with retention, a store restored from a backup"
  backup_secret backup-credentials
  kubectl wait --for=condition=Established crd/backups.rstore.dev crd/backupschedules.rstore.dev --timeout=60s >/dev/null
  # Refused at admission: a schedule that is not cron.
  if out=$(k apply --dry-run=server -f - 2>&1 <<EOF
apiVersion: rstore.dev/v1alpha1
kind: BackupSchedule
metadata: {name: bad}
spec: {store: $STORE, schedule: "every hour", destination: {url: "$BACKUP_URL"}}
EOF
  ); then fail "the API server accepts a BackupSchedule with schedule 'every hour'"; fi
  grep -q "five fields" <<<"$out" || fail "no CEL message for a bad schedule: $out"
  # Refused at admission: a rate under load that is neither a rate nor unlimited.
  if out=$(k apply --dry-run=server -f - 2>&1 <<EOF
apiVersion: rstore.dev/v1alpha1
kind: Backup
metadata: {name: bad}
spec: {store: $STORE, rateUnderLoad: fast, destination: {url: "$BACKUP_URL"}}
EOF
  ); then fail "the API server accepts a Backup with rateUnderLoad 'fast'"; fi
  grep -q "rateUnderLoad must be unlimited or bytes per second" <<<"$out" \
    || fail "no CEL message for a bad rateUnderLoad: $out"
  put_keys before-backup 5
  # Paced while the background writer writes (the member reads rateUnderLoad from the request).
  k apply -f - <<EOF
apiVersion: rstore.dev/v1alpha1
kind: Backup
metadata: {name: first}
spec:
  store: $STORE
  rateUnderLoad: 50MB
  destination: {url: "$BACKUP_URL", credentialsSecret: backup-credentials}
EOF
  backup_done() { [ "$(k get backup "$1" -o jsonpath='{.status.phase}')" = Succeeded ]; }
  wait_until "Backup first to succeed" backup_done first
  k get backup first
  revision=$(k get backup first -o jsonpath='{.status.revision}')
  object=$(k get backup first -o jsonpath='{.status.object}')
  [ -n "$revision" ] && [ "$revision" -gt 0 ] || fail "Backup first has no revision in status"
  wait_until "a Succeeded Event for Backup first" bash -c \
    "kubectl -n $NS get events --field-selector involvedObject.name=first,reason=Succeeded -o name | grep -q ."
  pass "Backup first: revision $revision saved to $object while the background writer ran"

  # A Backup of a store that does not exist says so and waits.
  k apply -f - <<EOF
apiVersion: rstore.dev/v1alpha1
kind: Backup
metadata: {name: nowhere}
spec: {store: no-such-store, destination: {url: "$BACKUP_URL"}}
EOF
  wait_until "Backup nowhere to say its store does not exist" bash -c \
    "kubectl -n $NS get backup nowhere -o jsonpath='{.status.message}' | grep -q 'does not exist'"
  k delete backup nowhere >/dev/null
  pass "a Backup of a missing store waits, saying the store does not exist"

  # A Backup to a bucket that does not exist: retried with backoff, then Failed, naming the
  # bucket; the store serves on (the background writer sees to that).
  k apply -f - <<EOF
apiVersion: rstore.dev/v1alpha1
kind: Backup
metadata: {name: no-bucket}
spec:
  store: $STORE
  maxAttempts: 2
  destination: {url: "s3://no-such-bucket/x", credentialsSecret: backup-credentials}
EOF
  backup_failed() { [ "$(k get backup "$1" -o jsonpath='{.status.phase}')" = Failed ]; }
  wait_until "Backup no-bucket to fail after its retries" backup_failed no-bucket
  msg=$(k get backup no-bucket -o jsonpath='{.status.message}')
  { grep -q "after 2 attempts" <<<"$msg" && grep -q "no-such-bucket" <<<"$msg"; } \
    || fail "Backup no-bucket does not say what failed: $msg"
  [ -n "$(k get events --field-selector involvedObject.name=no-bucket,reason=AttemptFailed -o name)" ] \
    || fail "no AttemptFailed Event for Backup no-bucket"
  k delete backup no-bucket >/dev/null
  pass "a Backup to a missing bucket: retried once, then Failed: ${msg:0:120}"

  # A schedule every minute keeping the newest 2, with the change stream archived: it makes
  # backups, retention keeps 2 good ones in the store (the first Backup's object counted
  # among them), and an archiver runs once the first has succeeded.
  k apply -f - <<EOF
apiVersion: rstore.dev/v1alpha1
kind: BackupSchedule
metadata: {name: every-minute}
spec:
  store: $STORE
  schedule: "* * * * *"
  destination: {url: "$BACKUP_URL", credentialsSecret: backup-credentials}
  retention: {keepLast: 2}
  archive: {segmentSeconds: 2}
EOF
  schedule_made() {
    k get backups -l rstore.dev/backup-schedule=every-minute -o json \
      | jq -e '[.items[] | select(.status.phase == "Succeeded")] | length >= 2' >/dev/null \
      && [ "$(k get backupschedule every-minute -o jsonpath='{.status.keptBackups}')" = 2 ]
  }
  wait_until "BackupSchedule every-minute to make 2 backups and keep 2" schedule_made
  k get backupschedule every-minute
  [ "$(k get backupschedule every-minute -o jsonpath='{.status.conditions[?(@.type=="Stale")].status}')" = False ] \
    || fail "BackupSchedule every-minute is Stale"
  k patch backupschedule every-minute --type merge -p '{"spec":{"suspend":true}}' >/dev/null
  revision=$(k get backupschedule every-minute -o jsonpath='{.status.lastSuccessful.revision}')
  [ -n "$revision" ] || fail "BackupSchedule every-minute has no lastSuccessful.revision"
  # Retention keeps the 2 newest good backups of the cluster: the first Backup's object,
  # older than both, was deleted, and an Event says so.
  [ -n "$(k get events --field-selector involvedObject.name=every-minute,reason=Retention -o name)" ] \
    || fail "no Retention Event for BackupSchedule every-minute"
  pass "BackupSchedule every-minute: a backup each minute, 2 kept by retention (revision $revision the newest), not Stale"

  # Point in time: writes after the newest full backup, up to a target revision, reach the
  # archive; a store restored at the target has them, and not the write after it.
  archiving() { [ "$(k get backupschedule every-minute -o jsonpath='{.status.conditions[?(@.type=="Archiving")].status}')" = True ]; }
  wait_until "the archiver of every-minute to run" archiving
  put_keys after-backup 3
  target=$(client kv put pitr/target here | jq -r .revision)
  DATA[pitr/target]=here
  client kv put pitr/after-target later >/dev/null
  [ "$target" -gt "$revision" ] || fail "the target $target is not after the newest full backup $revision"
  archiver_ip=$(k get pods -l app.kubernetes.io/name=rstore-archiver,app.kubernetes.io/instance=every-minute \
    -o jsonpath='{.items[0].status.podIP}')
  archived() {
    local at
    at=$(curl -fsS "http://$archiver_ip:9479/metrics" | awk '$1 == "rstore_archive_archived_revision" {print $2}')
    [ -n "$at" ] && [ "${at%.*}" -ge "$target" ]
  }
  wait_until "the archive to reach revision $target" archived
  pass "the archiver runs ($(k get deployment every-minute-archive -o jsonpath='{.status.availableReplicas}') pod) and archived past revision $target"

  # A new store restored at the target: the newest full backup before it, and the archived
  # changes up to it.
  k apply -f - <<EOF
apiVersion: rstore.dev/v1alpha1
kind: ReplicatedStore
metadata: {name: restored}
spec:
  replicas: 3
  bootstrap:
    fromBackup: {url: "$BACKUP_URL", atRevision: $target, credentialsSecret: backup-credentials}
EOF
  k wait --for=condition=Available rstore/restored --timeout="${TIMEOUT}s"
  restored_cluster=$(k get rstore restored -o jsonpath='{.status.clusterId}')
  [ "$restored_cluster" != "$CLUSTER_ID" ] || fail "the restored store has its source's cluster id"
  wait_until "the restore ConfigMap to be deleted once the cluster is up" bash -c \
    "! kubectl -n $NS get configmap restored-bootstrap -o name 2>/dev/null | grep -q ."
  restored_token=$(secret_value restored-credentials token)
  restored_ca=$(mktemp -t rstore-e2e-restored-ca.XXXXXX)
  secret_value restored-credentials 'ca\.crt' >"$restored_ca"
  restored_get() {
    node_cli kv get "$1" --endpoint "https://restored.$NS.svc:7379" --token "$restored_token" \
      --cacert "$restored_ca" 2>"$WRITER_DIR/restored-err"
  }
  for key in "${!DATA[@]}"; do
    got=$(restored_get "$key") || fail "read $key from the restored store: $(cat "$WRITER_DIR/restored-err")"
    [ "$got" = "${DATA[$key]}" ] || fail "restored $key is '$got', want '${DATA[$key]}'"
  done
  if got=$(restored_get pitr/after-target); then
    fail "the store restored at revision $target holds pitr/after-target, written after it: '$got'"
  fi
  rm -f "$restored_ca"
  k delete rstore restored --wait=false >/dev/null
  k delete backupschedule every-minute >/dev/null
  wait_until "the archiver to go with its schedule" bash -c \
    "! kubectl -n $NS get deployment every-minute-archive -o name 2>/dev/null | grep -q ."
  pass "store restored at revision $target: a new cluster ($restored_cluster) of 3 with all ${#DATA[@]} keys up to it, none after"

  # A store restored from where there is no backup: pod 0 refuses to start, and the store
  # says why (Progressing=False, RestoreFailed, with the node's own message naming the place)
  # and announces it with a Warning Event, instead of waiting in silence.
  k apply -f - <<EOF
apiVersion: rstore.dev/v1alpha1
kind: ReplicatedStore
metadata: {name: unrestorable}
spec:
  replicas: 1
  bootstrap:
    fromBackup: {url: "$BACKUP_URL-empty", credentialsSecret: backup-credentials}
EOF
  restore_failed() {
    [ "$(k get rstore unrestorable -o jsonpath='{.status.conditions[?(@.type=="Progressing")].reason}')" = RestoreFailed ]
  }
  wait_until "store unrestorable to report RestoreFailed" restore_failed
  msg=$(k get rstore unrestorable -o jsonpath='{.status.conditions[?(@.type=="Progressing")].message}')
  grep -q -- "$BACKUP_URL-empty" <<<"$msg" || fail "RestoreFailed does not name the backup location: $msg"
  [ -n "$(k get events --field-selector involvedObject.name=unrestorable,reason=RestoreFailed -o name)" ] \
    || fail "no RestoreFailed Event for store unrestorable"
  k get rstore unrestorable
  k delete rstore unrestorable --wait=false >/dev/null
  pass "a store restored from a place with no backup: RestoreFailed, ${msg:0:160}"
else
  log "backups: SKIPPED (no object store: set BACKUP_S3_ENDPOINT for tests/e2e/local.sh)"
fi

# ---------------------------------------------------------------------------------------------
log "kubectl scale 3 -> 5, with the operator's leader pod deleted in the middle"
holder=$(lease_holder)
k scale rstore "$STORE" --replicas=5
wait_until "the operator to start adding members" bash -c "[ \"\$(kubectl -n $NS get statefulset $STORE -o jsonpath='{.spec.replicas}')\" -gt 3 ]"
kubectl -n "$OPERATOR_NS" delete pod "$holder" --wait=false
wait_until "another operator replica to take the Lease" bash -c "h=\$(kubectl -n $OPERATOR_NS get lease rstore-operator -o jsonpath='{.spec.holderIdentity}'); [ -n \"\$h\" ] && [ \"\$h\" != $holder ]"
pass "the Lease moved from $holder to $(lease_holder)"
wait_converged 5
check_member_data "$STORE-3"
check_member_data "$STORE-4"
put_keys scaled-out 5

log "kubectl scale 5 -> 3"
k scale rstore "$STORE" --replicas=3
wait_converged 3
wait_until "pods $STORE-3 and $STORE-4 to be gone" bash -c "! kubectl -n $NS get pod $STORE-3 $STORE-4 -o name 2>/dev/null | grep -q ."
wait_until "PVCs of the removed members to be deleted" bash -c "! kubectl -n $NS get pvc data-$STORE-3 data-$STORE-4 -o name 2>/dev/null | grep -q ."
check_data
pass "scaled in to 3, removed members' pods and PVCs gone"

# ---------------------------------------------------------------------------------------------
log "kill -9 a member's process"
victim=$(k get rstore "$STORE" -o json | jq -r '[.status.members[] | select(.role == "voter" and .pod != "'"$(status .leader)"'") | .pod] | first')
restarts=$(k get pod "$victim" -o jsonpath='{.status.containerStatuses[0].restartCount}')
kill_member "$victim"
wait_until "$victim's container to restart" bash -c "[ \"\$(kubectl -n $NS get pod $victim -o jsonpath='{.status.containerStatuses[0].restartCount}')\" -gt $restarts ]"
wait_converged 3
check_member_data "$victim"
pass "$victim was killed, restarted in place (restartCount $(k get pod "$victim" -o jsonpath='{.status.containerStatuses[0].restartCount}')) and caught up"

log "what a user sees of it: kubectl logs (current and --previous) and the pod's Events"
[ -n "$(k logs "$victim" -c node --tail=5)" ] || fail "kubectl logs $victim is empty"
[ -n "$(k logs "$victim" -c node --previous --tail=5)" ] || fail "kubectl logs --previous $victim is empty"
[ -n "$(kubectl -n "$OPERATOR_NS" logs "deployment/$RELEASE" --tail=20)" ] || fail "kubectl logs of the operator is empty"
wait_until "a Started Event for $victim" bash -c \
  "kubectl -n $NS get events --field-selector involvedObject.name=$victim,reason=Started -o name | grep -q ."
pass "kubectl logs answers for members (and --previous after the kill) and the operator; Events say Started"

log "kubectl delete pod of the leader"
leader=$(status .leader)
term=$(status .term)
uid=$(k get pod "$leader" -o jsonpath='{.metadata.uid}')
k delete pod "$leader" --wait=false
wait_until "$leader to be replaced by a new pod" bash -c "u=\$(kubectl -n $NS get pod $leader -o jsonpath='{.metadata.uid}'); [ -n \"\$u\" ] && [ \"\$u\" != $uid ]"
wait_converged 3
check_data
put_keys after-leader-loss 5
check_member_data "$leader"
# A new term is not guaranteed: a leader back within the election timeout (a fast kubelet
# restarts it in well under a second) keeps its committed vote and leads on in the same term.
pass "leader $leader deleted and replaced: leader now $(status .leader), term $term -> $(status .term), no acknowledged write lost"

# ---------------------------------------------------------------------------------------------
log "a lost disk: delete a member's PVC together with its pod"
leader=$(status .leader)
victim=$(k get rstore "$STORE" -o json | jq -r --arg l "$leader" '[.status.members[] | select(.role == "voter" and .pod != $l) | .pod] | first')
old_id=$(k get rstore "$STORE" -o json | jq -r --arg p "$victim" '.status.members[] | select(.pod == $p) | .nodeId')
[ -n "$old_id" ] && [ "$old_id" != null ] || fail "no node id for $victim"
old_pvc=$(k get pvc "data-$victim" -o jsonpath='{.metadata.uid}')
k delete pvc "data-$victim" --wait=false
k delete pod "$victim" --wait=false
# The StatefulSet controller may recreate the pod while the old PVC is still terminating; such
# a pod stays Pending and the controller never makes a new claim (a Kubernetes race, not
# rstore's). Nudge it the way a person would: delete the Pending pod again.
pvc_replaced() {
  local uid
  uid=$(k get pvc "data-$victim" -o jsonpath='{.metadata.uid}' 2>/dev/null || true)
  if [ -n "$uid" ] && [ "$uid" != "$old_pvc" ]; then
    return 0
  fi
  if [ "$(k get pod "$victim" -o jsonpath='{.status.phase}' 2>/dev/null)" = Pending ] && [ -z "$uid" ]; then
    k delete pod "$victim" --wait=false >/dev/null 2>&1 || true
  fi
  return 1
}
wait_until "a new PVC for $victim" pvc_replaced
new_member() {
  k get rstore "$STORE" -o json | jq -e --arg p "$victim" --arg old "$old_id" '
    ([.status.members[] | select(.pod == $p and .nodeId != $old)] | length) == 1
    and ([.status.members[] | select(.nodeId == $old)] | length) == 0'
}
wait_until "$victim to rejoin with a new node id" new_member
wait_converged 3
[ "$(status .clusterId)" = "$CLUSTER_ID" ] || fail "cluster id changed"
check_member_data "$victim"
pass "$victim lost its disk and rejoined as a new member (old id $old_id removed)"

# ---------------------------------------------------------------------------------------------
log "eviction through the Eviction API, as kubectl drain does, against the PDB"
evict() {
  kubectl create --raw "/api/v1/namespaces/$NS/pods/$1/eviction" -f - <<EOF
{"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "$1", "namespace": "$NS"}}
EOF
}
wait_until "the PDB to allow one disruption" bash -c "[ \"\$(kubectl -n $NS get pdb $STORE -o jsonpath='{.status.disruptionsAllowed}')\" = 1 ]"
leader=$(status .leader)
read -r first second < <(k get rstore "$STORE" -o json | jq -r --arg l "$leader" '[.status.members[] | select(.pod != $l) | .pod] | join(" ")')
evict "$first" >/dev/null || fail "evicting $first was refused although the PDB allowed it"
if out=$(evict "$second" 2>&1); then
  fail "evicting $second while $first is down was allowed: the PDB was not honoured"
fi
grep -qi "disruption budget" <<<"$out" || fail "the second eviction failed, but not because of the PDB: $out"
wait_converged 3
wait_until "the PDB to allow one disruption again" bash -c "[ \"\$(kubectl -n $NS get pdb $STORE -o jsonpath='{.status.disruptionsAllowed}')\" = 1 ]"
evict "$second" >/dev/null || fail "evicting $second after $first came back was refused"
wait_converged 3
check_data
pass "evicted $first; $second refused by the PDB while $first was down, evicted once it was back"

# ---------------------------------------------------------------------------------------------
log "change the replication mode: quorum -> sync -> quorum"
mode_is() { local c; c=$(admin cluster config) && grep -q "\"$1\"" <<<"$c"; }
for mode in sync quorum; do
  k patch rstore "$STORE" --type merge -p "{\"spec\":{\"replication\":{\"mode\":\"$mode\"}}}"
  wait_until "replication mode $mode on the cluster" mode_is "$mode"
  wait_converged 3
  put_keys "mode-$mode" 3
  check_data
  pass "mode $mode applied live through Raft"
done

# ---------------------------------------------------------------------------------------------
log "pause, change, resume"
k patch rstore "$STORE" --type merge -p '{"spec":{"paused":true}}'
k scale rstore "$STORE" --replicas=4
wait_until "Progressing=False reason Paused" bash -c "kubectl -n $NS get rstore $STORE -o json | jq -e '.status.conditions[] | select(.type == \"Progressing\" and .reason == \"Paused\")'"
sleep 5
[ "$(k get statefulset "$STORE" -o jsonpath='{.spec.replicas}')" = 3 ] || fail "a paused store was changed"
k scale rstore "$STORE" --replicas=3
k patch rstore "$STORE" --type merge -p '{"spec":{"paused":false}}'
wait_converged 3
pass "paused: nothing changed while paused; resumed and reconciled"

# ---------------------------------------------------------------------------------------------
log "a rolling image change to $NODE_IMAGE_NEXT"
ids_before=$(k get rstore "$STORE" -o json | jq -c '[.status.members[] | {pod, nodeId}] | sort_by(.pod)')
k patch rstore "$STORE" --type merge -p "{\"spec\":{\"image\":\"$NODE_IMAGE_NEXT\"}}"
all_upgraded() {
  local images
  images=$(k get pods -l "app.kubernetes.io/instance=$STORE,app.kubernetes.io/component=store" \
    -o jsonpath='{range .items[*]}{.spec.containers[?(@.name=="node")].image}{"\n"}{end}')
  [ "$(grep -c . <<<"$images")" = 3 ] && ! grep -qv -x -F "$NODE_IMAGE_NEXT" <<<"$images"
}
wait_until "every member to run $NODE_IMAGE_NEXT" all_upgraded
wait_converged 3
ids_after=$(k get rstore "$STORE" -o json | jq -c '[.status.members[] | {pod, nodeId}] | sort_by(.pod)')
[ "$ids_before" = "$ids_after" ] || fail "members changed identity across the upgrade: $ids_before -> $ids_after"
check_data
put_keys upgraded 3
check_data
pass "rolled to $NODE_IMAGE_NEXT one pod at a time; every member kept its id and data"

check_writer

# ---------------------------------------------------------------------------------------------
log "kubectl delete rstore"
k delete rstore "$STORE" --wait=true --timeout=120s
wait_until "the StatefulSet, Services and PDB to be garbage-collected" \
  bash -c "! kubectl -n $NS get statefulset/$STORE service/$STORE service/$STORE-peer pdb/$STORE -o name 2>/dev/null | grep -q ."
# whenDeleted: Retain (the default): the data outlives the resource.
k get pvc "data-$STORE-0" >/dev/null || fail "volumes were not retained"
pass "deleted; children garbage-collected, volumes retained (whenDeleted: Retain)"

log "helm upgrade, then helm uninstall"
helm upgrade "$RELEASE" charts/rstore-operator --namespace "$OPERATOR_NS" \
  --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" \
  --set replicaCount=1 --set logFormat=json --wait --timeout 5m
kubectl -n "$OPERATOR_NS" rollout status deployment/"$RELEASE" --timeout=180s
helm uninstall "$RELEASE" --namespace "$OPERATOR_NS" --wait --timeout 5m
wait_until "the operator's pods to be gone" bash -c "! kubectl -n $OPERATOR_NS get pods -o name | grep -q ."
kubectl get crd replicatedstores.rstore.dev >/dev/null || fail "helm uninstall removed the CRD (it must keep it)"
pass "helm upgrade rolled the operator; helm uninstall removed it and kept the CRD"

echo
echo "all scenarios passed"
