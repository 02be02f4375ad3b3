#!/usr/bin/env bash
# The main job: installs what is missing, builds, starts a local shard on
# loopback and runs the demo trainer against it, then stops the shard.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash scripts/build.sh psd psd_demo_trainer

workdir="$(mktemp -d)"
shard_pid=""
cleanup() {
  if [ -n "$shard_pid" ] && kill -0 "$shard_pid" 2>/dev/null; then
    kill -TERM "$shard_pid" 2>/dev/null || true
    wait "$shard_pid" 2>/dev/null || true
  fi
  rm -rf "$workdir"
}
trap cleanup EXIT

./build/server/psd shard --listen 127.0.0.1:0 --port-file "$workdir/port" \
  --memory-limit 1GiB --log-level info &
shard_pid=$!
for _ in $(seq 1 200); do
  [ -s "$workdir/port" ] && break
  kill -0 "$shard_pid" 2>/dev/null || { echo "demo: shard failed to start" >&2; exit 1; }
  sleep 0.1
done
[ -s "$workdir/port" ] || { echo "demo: shard did not report its port" >&2; exit 1; }
port="$(cat "$workdir/port")"
echo "demo: shard listening on 127.0.0.1:$port"

./build/client/psd_demo_trainer --shard "127.0.0.1:$port"
