#!/usr/bin/env bash
# The Grafana dashboard and the Prometheus files in deploy/ against psd:
# promtool checks the rules and the scrape config and runs the alerts' unit
# tests (tests/prometheus/psd-alerts-test.yml); then a local cluster
# (configs/local.yaml on free ports) trains a little, saves a checkpoint, and
# every metric the dashboard's panels and the alert rules name must be among
# what its coordinator and shards export. Run from the repository root with
# the build in ./build.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "${1:-}" = "--inside" ]; then
  # Runs under psd-local (PSD_COORDINATOR is set); $2 is the run directory.
  run="$2"
  ./build/client/psd_cluster_demo --coordinator "$PSD_COORDINATOR" --role chief --task 0 \
    --steps 3 > /dev/null
  ./build/client/psctl/psctl --coordinator "$PSD_COORDINATOR" ckpt save > /dev/null
  for f in "$run"/*.http; do
    /usr/bin/python3 -c 'import sys, urllib.request
print(urllib.request.urlopen("http://127.0.0.1:%s/metrics" % open(sys.argv[1]).read().strip(),
                             timeout=10).read().decode())' "$f" > "$f.metrics"
  done
  exec /usr/bin/python3 tests/integration/check_dashboard.py \
    --dashboard deploy/grafana/psd.json --rules deploy/prometheus/psd-alerts.yml "$run"/*.metrics
fi

promtool check rules deploy/prometheus/psd-alerts.yml
promtool check config deploy/prometheus/prometheus.yml
(cd tests/prometheus && promtool test rules psd-alerts-test.yml)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/checkpoints"
sed "s|dir: /tmp/psd/checkpoints|dir: $work/checkpoints|" configs/local.yaml > "$work/local.yaml"
deploy/local/psd-local --config "$work/local.yaml" --state-dir "$work/state" \
  --run-dir "$work/cluster" --any-ports -- bash tests/integration/dashboard_test.sh --inside "$work/cluster"
