#!/usr/bin/env bash
# Smoke test of the main job: starts `psd shard` on a free loopback port, runs
# the demo trainer against it twice (the demo deletes what it creates, so the
# second run shows it can be re-run), then stops the shard with SIGTERM and
# expects exit status 0. The shard is killed on any exit.
#
#   demo_smoke.sh PATH/TO/psd PATH/TO/psd_demo_trainer
set -euo pipefail

psd=${1:?usage: demo_smoke.sh PSD_BINARY DEMO_TRAINER}
trainer=${2:?usage: demo_smoke.sh PSD_BINARY DEMO_TRAINER}

dir=$(mktemp -d "${TMPDIR:-/tmp}/psd_demo_smoke.XXXXXX")
shard_pid=
cleanup() {
  if [[ -n $shard_pid ]] && kill -0 "$shard_pid" 2>/dev/null; then
    kill -KILL "$shard_pid" 2>/dev/null || true
    wait "$shard_pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

"$psd" --log-level warn shard --id 0 --listen 127.0.0.1:0 --port-file "$dir/port" &
shard_pid=$!

# The shard writes its port after binding; wait for it (bounded).
port=
for _ in $(seq 1 200); do
  if [[ -s $dir/port ]]; then
    port=$(tr -d '[:space:]' <"$dir/port")
    [[ $port =~ ^[0-9]+$ ]] && break
    port=
  fi
  if ! kill -0 "$shard_pid" 2>/dev/null; then
    echo "demo_smoke: psd shard exited before writing its port" >&2
    exit 1
  fi
  sleep 0.1
done
if [[ -z $port ]]; then
  echo "demo_smoke: psd shard wrote no port within 20 s" >&2
  exit 1
fi
echo "demo_smoke: psd shard (pid $shard_pid) on 127.0.0.1:$port"

for run in 1 2; do
  echo "demo_smoke: demo trainer, run $run"
  "$trainer" --shard "127.0.0.1:$port"
done

echo "demo_smoke: stopping the shard with SIGTERM"
kill -TERM "$shard_pid"
for _ in $(seq 1 300); do
  kill -0 "$shard_pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$shard_pid" 2>/dev/null; then
  echo "demo_smoke: psd shard still running 30 s after SIGTERM" >&2
  exit 1
fi
status=0
wait "$shard_pid" || status=$?
shard_pid=
if [[ $status -ne 0 ]]; then
  echo "demo_smoke: psd shard exited with status $status after SIGTERM" >&2
  exit 1
fi
echo "demo_smoke: ok"
