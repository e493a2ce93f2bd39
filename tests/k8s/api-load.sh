#!/usr/bin/env bash
# The API load each client puts on the real control plane's API server, from its audit log:
# requests per minute by user, verb and resource, over a window of the log.
#
#   bash tests/k8s/api-load.sh [SECONDS] [USER-SUBSTRING]
#
#   SECONDS          the window: the last SECONDS of the log (default 120)
#   USER-SUBSTRING   only users containing it (default: the operator's service account,
#                    "rstore-operator"; "" for every client)
# Environment: RSTORE_K8S_DIR (default /tmp/rstore-k8s). Watches count once, when they open.
set -euo pipefail
dir=${RSTORE_K8S_DIR:-/tmp/rstore-k8s}
window=${1:-120}
who=${2-rstore-operator}
log="$dir/logs/audit.log"
[ -f "$log" ] || { echo "no audit log at $log (is the control plane running?)" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq is required" >&2; exit 1; }
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
