#!/usr/bin/env bash
# Proves that tests/manifests/check.sh fails on real problems: applies one deliberate break at a
# time to a scratch copy of the repository and expects the check to fail each time.
# Not part of .ci/run (it runs the whole check once per mutation, about a minute and a half); run it after changing
# check.py:  bash tests/manifests/mutations.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${RSTORE_MANIFESTS_VENV:-$root/target/manifests-venv}
bash "$root/tests/manifests/check.sh" >/dev/null # builds the venv, and the tree must pass first
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# description | file | text to find | replacement (literal strings, first occurrence)
mutations=(
  'chart CRD drifts from crds/|charts/rstore-operator/crds/replicatedstore.yaml|Desired number of voters|Desired voters'
  'RBAC verb beyond the contract|charts/rstore-operator/templates/rbac.yaml|verbs: ["get", "list", "delete"]|verbs: ["get", "list", "watch", "delete"]'
  'wildcard RBAC resource|charts/rstore-operator/templates/rbac.yaml|resources: ["pods"]|resources: ["*"]'
  'writable root filesystem|charts/rstore-operator/values.yaml|readOnlyRootFilesystem: true|readOnlyRootFilesystem: false'
  'POD_NAMESPACE not from the downward API|charts/rstore-operator/templates/deployment.yaml|fieldPath: metadata.namespace|fieldPath: metadata.name'
  'unknown Deployment field|charts/rstore-operator/templates/deployment.yaml|revisionHistoryLimit:|revisionHistoryLimt:'
  'template syntax error|charts/rstore-operator/templates/service.yaml|{{- end }}|{{- end }'
  'value outside values.schema.json|charts/rstore-operator/values.yaml|logFormat: json|logFormat: xml'
  'misspelled metric in an alert|charts/rstore-operator/templates/prometheusrule.yaml|rstore_raft_applied_index|rstore_raft_apply_index'
  'impossible label value in the dashboard|dashboards/rstore.json|role=\"leader\"|role=\"leading\"'
  'metric the node does not export, in the dashboard|dashboards/rstore.json|rstore_kv_revision|rstore_kv_revisions'
  'typo in an example|examples/read-replicas-sync.yaml|readReplicas: 3|readReplica: 3'
  'example breaks a CEL rule|examples/production.yaml|electionMinMs: 1500|electionMinMs: 100'
  'image names drift|Makefile|VERSION        ?= 0.1.0|VERSION        ?= 0.2.0'
  'e2e script syntax error|tests/e2e/kind.sh|log "delete the leader pod"|if then'
)

failed=0
for m in "${mutations[@]}"; do
  IFS='|' read -r what file old new <<<"$m"
  rm -rf "${scratch:?}/repo"
  mkdir "$scratch/repo"
  git -C "$root" ls-files -z --cached --others --exclude-standard | (cd "$root" && xargs -0 cp --parents -t "$scratch/repo")
  if ! python3 - "$scratch/repo/$file" "$old" "$new" <<'PY'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
if old not in text:
    sys.exit(1)
open(path, "w").write(text.replace(old, new, 1))
PY
  then
    echo "BROKEN MUTATION (text not found in $file): $what"
    failed=$((failed + 1))
    continue
  fi
  if RSTORE_MANIFESTS_VENV=$venv bash "$scratch/repo/tests/manifests/check.sh" >"$scratch/out" 2>&1; then
    echo "NOT CAUGHT: $what"
    failed=$((failed + 1))
  else
    echo "caught: $what -> $(grep -m1 '^FAIL' "$scratch/out" | cut -c1-120)"
  fi
done
echo "mutations: $((${#mutations[@]} - failed)) caught, ${failed} missed"
[ "$failed" -eq 0 ]
