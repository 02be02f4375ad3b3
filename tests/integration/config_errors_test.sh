#!/usr/bin/env bash
# Config errors stop `psd` at start with a message naming what is wrong: an
# unknown key, a bad value (file and flag), a missing file, a missing shard
# id, a shard without an id. Each case must exit non-zero within seconds without serving.
# Usage: config_errors_test.sh PSD
set -euo pipefail
psd="$1"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "config_errors_test: $*" >&2; exit 1; }

# expect_error MESSAGE PSD_ARGS...: psd exits non-zero and says MESSAGE.
expect_error() {
  local message="$1"; shift
  local rc=0
  timeout 20 "$psd" "$@" >"$work/out.txt" 2>&1 || rc=$?
  [ "$rc" -ne 0 ] || fail "psd $* started; expected: $message"
  [ "$rc" -ne 124 ] || fail "psd $* kept running; expected: $message"
  grep -qF -- "$message" "$work/out.txt" || fail "psd $*: expected '$message', got: $(cat "$work/out.txt")"
}

printf 'coordinator:\n  listen: 127.0.0.1:0\n  stat_dir: /tmp/x\n' >"$work/unknown.yaml"
expect_error "unknown.yaml: coordinator: unknown key 'stat_dir'" coordinator --config "$work/unknown.yaml"
expect_error "unknown.yaml: coordinator: unknown key 'stat_dir'" shard --config "$work/unknown.yaml" --id 0

printf 'shards:\n  - id: 0\n    listen: 127.0.0.1:0\n    memory_limit: plenty\n' >"$work/bad.yaml"
expect_error "bad.yaml: shards[0].memory_limit: invalid byte size 'plenty'" shard --config "$work/bad.yaml" --id 0
printf 'shards:\n  - id: 0\n    device: tpu:0\n' >"$work/device.yaml"
expect_error "device.yaml: shards[0].device: unknown device 'tpu:0'" shard --config "$work/device.yaml" --id 0
printf 'checkpoint:\n  max_to_keep: many\n' >"$work/keep.yaml"
expect_error "keep.yaml: checkpoint.max_to_keep: cannot read 'many'" coordinator --config "$work/keep.yaml"
printf 'coordinator: [127.0.0.1:7070]\n' >"$work/shape.yaml"
expect_error "shape.yaml: coordinator: expected a mapping" coordinator --config "$work/shape.yaml"

expect_error "cannot open cluster file $work/missing.yaml" coordinator --config "$work/missing.yaml"
printf 'shards:\n  - id: 0\n    listen: 127.0.0.1:0\n' >"$work/one.yaml"
expect_error "one.yaml: no shard with id 3" shard --config "$work/one.yaml" --id 3
# A shard needs an id: --id, or a cluster file that lists only it.
expect_error "psd shard needs --id K" shard --listen 127.0.0.1:0
printf 'shards:\n  - id: 0\n  - id: 1\n' >"$work/two.yaml"
expect_error "two.yaml lists 2 shards: give this one's --id" shard --config "$work/two.yaml"

# The same checks for flags.
expect_error "--listen: 'nowhere' is not HOST:PORT" coordinator --listen nowhere
expect_error "--http-listen: '127.0.0.1:99999': the port must be" shard --id 0 --listen 127.0.0.1:0 --http-listen 127.0.0.1:99999
expect_error "--lease-period 1 s must be at least twice --heartbeat-interval (1 s)" coordinator --listen 127.0.0.1:0 --lease-period 1
expect_error "--device: unknown device 'abacus'" shard --id 0 --listen 127.0.0.1:0 --device abacus
expect_error "--memory-limit: invalid byte size" shard --id 0 --listen 127.0.0.1:0 --memory-limit lots
expect_error "http listen address '0.0.0.0:0'" shard --id 0 --listen 127.0.0.1:0 --http-listen 0.0.0.0:0
printf 'shards:\n  - id: 0\n    listen: 127.0.0.1:0\n    http_max_connections: 0\n' >"$work/cap.yaml"
expect_error "cap.yaml: shards[0].http_max_connections: must be >= 1" shard --config "$work/cap.yaml" --id 0
expect_error "--http-max-connections" shard --id 0 --listen 127.0.0.1:0 --http-max-connections 0
expect_error "--max-rpc-threads" coordinator --listen 127.0.0.1:0 --max-rpc-threads 1
echo "config_errors_test: ok"
