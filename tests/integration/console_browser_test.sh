#!/usr/bin/env bash
# The coordinator's console in a real browser: a local cluster
# (configs/local.yaml on free ports under deploy/local/psd-local) trains a
# little and saves a checkpoint; headless Chromium loads `/`, runs its
# script (a refresh included, in virtual time) and dumps the DOM, which
# must list both shards, the demo's variables and the checkpoint; a
# screenshot of the page is kept as a test artifact.
#
#   console_browser_test.sh ARTIFACT_DIR
#
# Exits 77 (ctest's SKIP_RETURN_CODE) when Chromium is not installed
# (scripts/install-deps.sh installs Debian's `chromium`; PSD_CHROMIUM names
# another binary). Every step is
# bounded (timeout), and psd-local stops the cluster however it ends. Run
# from anywhere, with the build in ./build of the repository.
set -euo pipefail
cd "$(dirname "$0")/../.."

chromium_bin="${PSD_CHROMIUM-$(command -v chromium || command -v chromium-browser || true)}"

if [ "${1:-}" = "--inside" ]; then
  # Runs under psd-local (PSD_COORDINATOR is set).
  run="$2"
  artifacts="$3"
  timeout 120 ./build/client/psd_cluster_demo --coordinator "$PSD_COORDINATOR" --role chief \
    --task 0 --steps 5 > "$artifacts/trainer.log"
  timeout 60 ./build/client/psctl/psctl --coordinator "$PSD_COORDINATOR" ckpt save \
    > "$artifacts/save.log"
  url="http://127.0.0.1:$(cat "$run/coordinator.http")/"
  # A few chart samples (one every 5 s) and every part's state known, so
  # the page shows what a user would see after a short run; bounded.
  /usr/bin/python3 - "$url" <<'EOF'
import json, sys, time, urllib.request
url = sys.argv[1] + "console.json"
for _ in range(120):
    view = json.load(urllib.request.urlopen(url, timeout=10))
    known = all(v["initialized"] != "unknown" for v in view["variables"])
    if known and len(view["samples"]) >= 4:
        sys.exit(0)
    time.sleep(0.5)
sys.exit("console.json never had 4 samples and every part state: " + json.dumps(view)[:2000])
EOF
  profile="$(mktemp -d)"
  trap 'rm -rf "$profile"' EXIT
  chrome=("$chromium_bin" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage
          --no-first-run --hide-scrollbars --user-data-dir="$profile")
  # 12 s of virtual time: the page's refresh (every 5 s) runs at least once.
  timeout 90 "${chrome[@]}" --virtual-time-budget=12000 --dump-dom "$url" \
    > "$artifacts/console.dom.html" 2> "$artifacts/chromium-dom.log"
  timeout 90 "${chrome[@]}" --virtual-time-budget=6000 --window-size=1400,1500 \
    --screenshot="$artifacts/console.png" "$url" > "$artifacts/chromium-shot.log" 2>&1
  test -s "$artifacts/console.png"
  /usr/bin/python3 tests/integration/check_console_dom.py "$artifacts/console.dom.html" \
    --shards 2 --variables model/embedding model/dense/w global_step model/user_embedding \
    --checkpoint model.ckpt
  exit 0
fi

if [ -z "$chromium_bin" ] || [ ! -x "$chromium_bin" ]; then
  echo "console_browser_test: SKIP: chromium is not installed (scripts/install-deps.sh)"
  exit 77
fi
artifacts="$(realpath -m "${1:-build/test-artifacts/console}")"
mkdir -p "$artifacts"
rm -f "$artifacts"/console.png "$artifacts"/console.dom.html
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/checkpoints"
sed "s|dir: /tmp/psd/checkpoints|dir: $work/checkpoints|" configs/local.yaml > "$work/local.yaml"
deploy/local/psd-local --config "$work/local.yaml" --state-dir "$work/state" \
  --run-dir "$work/cluster" --any-ports -- \
  bash tests/integration/console_browser_test.sh --inside "$work/cluster" "$artifacts"
echo "console_browser_test: screenshot at $artifacts/console.png"
