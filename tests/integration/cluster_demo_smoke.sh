#!/usr/bin/env bash
# The main job's cluster part (scripts/demo.sh --cluster-steps) on free
# ports: a local cluster from configs/local.yaml under deploy/local/psd-local,
# two trainers sharing a model (a partitioned embedding, a template, an
# embedding table keyed by user id with an Adagrad slot table), the check
# role verifying every update landed, psctl showing it. Run from the
# repository root with the build in ./build.
set -euo pipefail
cd "$(dirname "$0")/../.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
deploy/local/psd-local --config configs/local.yaml --state-dir "$work/state" \
  --run-dir "$work/cluster" --any-ports -- bash scripts/demo.sh --cluster-steps
