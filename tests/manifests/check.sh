#!/usr/bin/env bash
# Offline checks of the Helm chart, the CRD copy, examples/, the dashboard, the alerts and the
# kind e2e script (see check.py). Needs python3 (3.11+) and make; no cluster, no Docker.
#
# The pinned tools go into a venv (default target/manifests-venv, override with
# RSTORE_MANIFESTS_VENV), rebuilt whenever requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The cheapest check first, with no tools at all: the chart's CRDs are crds/, byte for byte.
for crd in crds/*.yaml; do
  if ! cmp -s "$crd" "charts/rstore-operator/crds/$(basename "$crd")"; then
    echo "FAIL charts/rstore-operator/crds/$(basename "$crd") differs from $crd" >&2
    echo "     run: make crds   (or: cp crds/*.yaml charts/rstore-operator/crds/)" >&2
    exit 1
  fi
done

# The image build context (.dockerignore) must let in every workspace member's manifest and
# sources: cargo resolves the whole workspace even for `-p node`, and there is no Docker here
# to find out by building.
members=$(sed -n 's/^members = \[\(.*\)\]/\1/p' Cargo.toml | tr -d '"' | tr ',' ' ')
[ -n "$members" ] || { echo "FAIL cannot read the workspace members from Cargo.toml" >&2; exit 1; }
for m in $members; do
  for want in "!$m/Cargo.toml" "!$m/src/"; do
    if ! grep -qxF -- "$want" .dockerignore; then
      echo "FAIL .dockerignore lacks '$want': images would not build without workspace member $m" >&2
      exit 1
    fi
  done
done

venv=${RSTORE_MANIFESTS_VENV:-target/manifests-venv}
req=tests/manifests/requirements.txt
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$want" ]; then
  echo "installing pinned tools into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  # --ignore-requires-python: helm-sdkpy declares Python >= 3.12 but works on 3.11.
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --ignore-requires-python -r "$req"
  echo "$want" > "$venv/.requirements"
fi

PATH="$(pwd)/$venv/bin:$PATH" exec "$venv/bin/python" tests/manifests/check.py "$@"
