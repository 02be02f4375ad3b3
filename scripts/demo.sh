#!/usr/bin/env bash
# The main job: installs what is missing, builds, then
#  1. starts one shard on loopback and runs the single-shard demo trainer
#     against it (every op, every dtype), then stops the shard;
#  2. brings up the local cluster of configs/local.yaml (one coordinator, two
#     shards) with deploy/local/psd-local and runs two trainer processes
#     (psd_cluster_demo, a chief and a worker) at once: they share one model
#     through the coordinator — variable scopes, a template, an embedding
#     partitioned across both shards with gather/scatter across its parts, an
#     embedding table keyed by user id with an Adagrad slot table —
#     then checks that both trainers' updates landed, shows the cluster with
#     psctl, and stops the cluster;
#  3. the Python client's real example (client/python/examples/train_digits.py):
#     an MLP on scikit-learn's digits trained by two asynchronous trainer
#     processes on a fresh 2-shard local cluster, with Adagrad on the shards and
#     periodic checkpoints; the cluster is stopped and restarted, the latest
#     checkpoint restored, training continues from its global step, and the
#     test accuracy (>= 0.90) and timings are printed;
#  4. click-through training with an embedding table keyed by feature id
#     (client/python/examples/train_ctr.py): ids from a space of 10^9, labels
#     from a known logistic model; the held-out log-loss is printed beside the
#     generating model's.
# PSD_DEMO_ANY_PORTS=1 runs the cluster on free ports instead of the file's.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--cluster-steps" ]; then
  # Runs inside psd-local, which exported PSD_COORDINATOR.
  steps=40
  ./build/client/psd_cluster_demo --coordinator "$PSD_COORDINATOR" --role chief --task 0 \
    --steps "$steps" &
  chief=$!
  ./build/client/psd_cluster_demo --coordinator "$PSD_COORDINATOR" --role worker --task 1 \
    --steps "$steps" &
  worker=$!
  rc=0
  wait "$chief" || rc=$?
  wait "$worker" || rc=$?
  [ "$rc" = 0 ] || { echo "demo: a trainer failed" >&2; exit "$rc"; }
  ./build/client/psd_cluster_demo --coordinator "$PSD_COORDINATOR" --role check \
    --expect-steps $((2 * steps))
  psctl=./build/client/psctl/psctl
  "$psctl" --coordinator "$PSD_COORDINATOR" status
  "$psctl" --coordinator "$PSD_COORDINATOR" vars list
  "$psctl" --coordinator "$PSD_COORDINATOR" vars show model/embedding
  "$psctl" --coordinator "$PSD_COORDINATOR" vars show model/user_embedding
  "$psctl" --coordinator "$PSD_COORDINATOR" vars get global_step
  exit 0
fi

bash scripts/install-deps.sh
bash scripts/build.sh psd psctl psd_demo_trainer psd_cluster_demo psclient

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

echo "demo: part 1, one shard and the single-shard demo trainer"
./build/server/psd shard --id 0 --listen 127.0.0.1:0 --port-file "$workdir/port" \
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
kill -TERM "$shard_pid"
wait "$shard_pid" || true
shard_pid=""

echo "demo: part 2, the local cluster of configs/local.yaml and two trainers"
any_ports=()
[ "${PSD_DEMO_ANY_PORTS:-0}" = 1 ] && any_ports=(--any-ports)
# A fresh state directory: the shards start empty, so the registry must too.
deploy/local/psd-local --config configs/local.yaml --state-dir "$workdir/state" \
  --run-dir "$workdir/cluster" "${any_ports[@]}" -- bash scripts/demo.sh --cluster-steps

echo "demo: part 3, the Python client: digits, two trainers, checkpoint, restart, restore"
PYTHONPATH=build/client/python /usr/bin/python3 client/python/examples/train_digits.py \
  --psd-binary build/server/psd --steps "${PSD_DEMO_DIGITS_STEPS:-600}"

echo "demo: part 4, an embedding table keyed by feature id: click-through, ids from a space of 10^9"
PYTHONPATH=build/client/python /usr/bin/python3 client/python/examples/train_ctr.py \
  --psd-binary build/server/psd
