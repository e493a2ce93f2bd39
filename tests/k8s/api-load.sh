#!/usr/bin/env bash
# The API load on the real control plane's API server, in requests per minute.
#
#   bash tests/k8s/api-load.sh [SECONDS] [USER-SUBSTRING]
#       by user, verb and resource, from the API server's audit log: the last SECONDS of the
#       log (default 120), for users containing USER-SUBSTRING (default: the operator's
#       service account, "rstore-operator"; "" for every client). Watches count once, when
#       they open.
#   bash tests/k8s/api-load.sh --metrics [SECONDS] [RESOURCE-REGEX]
#       by verb and resource, from the API server's own apiserver_request_total counter,
#       sampled now and SECONDS later (default 120), for every client together; only
#       resources matching RESOURCE-REGEX (default: all). The counter has no user label, so
#       the audit-log mode is the one that isolates the operator.
#
# Environment: RSTORE_K8S_DIR (default /tmp/rstore-k8s).
set -euo pipefail
dir=${RSTORE_K8S_DIR:-/tmp/rstore-k8s}
command -v jq >/dev/null || { echo "jq is required" >&2; exit 1; }

if [ "${1:-}" = --metrics ]; then
  window=${2:-120}
  only=${3:-.}
  export KUBECONFIG=${KUBECONFIG:-$dir/kubeconfig}
  sample() {
    kubectl get --raw /metrics | awk '
      function label(name,   m) {
        # [{,]name="value": the comma or brace keeps "resource" from matching "subresource".
        if (match($0, "[{,]" name "=\"[^\"]*\"")) {
          m = substr($0, RSTART + length(name) + 3, RLENGTH - length(name) - 4)
          return m
        }
        return ""
      }
      /^apiserver_request_total\{/ {
        verb = label("verb"); res = label("resource"); sub_ = label("subresource")
        # Non-resource URLs (/api, /openapi/v3) come as an empty resource and the path.
        if (res == "") res = sub_; else if (sub_ != "") res = res "/" sub_
        n[verb "\t" res] += $NF
      }
      END { for (k in n) print k "\t" n[k] }'
  }
  before=$(mktemp)
  trap 'rm -f "$before"' EXIT
  sample >"$before"
  sleep "$window"
  sample | awk -F'\t' -v window="$window" -v only="$only" '
    NR == FNR { was[$1 "\t" $2] = $3; next }
    $2 ~ only {
      d = $3 - was[$1 "\t" $2]
      if (d > 0) printf "%.1f\t%s\t%s\n", d * 60 / window, $1, $2
    }' "$before" - | sort -t$'\t' -k1,1nr | { printf 'per_min\tverb\tresource\n'; cat; } | column -t -s $'\t'
  exit 0
fi

window=${1:-120}
who=${2-rstore-operator}
log="$dir/logs/audit.log"
[ -f "$log" ] || { echo "no audit log at $log (is the control plane running?)" >&2; exit 1; }
now=$(date -u +%s)
jq -r --argjson since "$((now - window))" --arg who "$who" --argjson window "$window" -s '
  [ .[]
    | select(.stage == "ResponseComplete" or .stage == "ResponseStarted")
    | select((.stageTimestamp | sub("\\.[0-9]+Z$"; "Z") | fromdate) >= $since)
    | select(.user.username | contains($who))
    | {user: .user.username, verb: .verb,
       resource: ((.objectRef.resource // .requestURI) + (if .objectRef.subresource then "/" + .objectRef.subresource else "" end))} ]
  | group_by([.user, .verb, .resource])
  | map({user: .[0].user, verb: .[0].verb, resource: .[0].resource, per_min: ((length * 60 / $window) * 10 | round / 10)})
  | sort_by(-.per_min)
  | (["per_min", "verb", "resource", "user"] | @tsv),
    (.[] | [.per_min, .verb, .resource, .user] | @tsv)
' "$log" | column -t -s $'\t'
