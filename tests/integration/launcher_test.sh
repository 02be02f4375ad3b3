#!/usr/bin/env bash
# deploy/local/psd-local leaves no process behind, also when a member
# crashed: (a) with a COMMAND running, a shard is SIGKILLed mid-run, then
# the launcher gets SIGTERM: it stops the command and every cluster process
# at once (not when the command would have ended); (b) without a COMMAND, a
# SIGKILLed shard makes the launcher stop the rest and exit non-zero. In
# both, no psd process of that cluster (found by its run directory) remains.
# Usage: launcher_test.sh PSD PSCTL LAUNCHER CONFIG
set -euo pipefail
psd="$1"; psctl="$2"; launcher="$3"; config="$4"
work="$(mktemp -d)"
launcher_pid=""
cleanup() {
  [ -n "$launcher_pid" ] && kill -KILL "$launcher_pid" 2>/dev/null || true
  pkill -KILL -f "$work/" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "launcher_test: $*" >&2; exit 1; }

# start NAME [-- COMMAND...]: the launcher in the background, on free ports,
# run directory $work/NAME; waits until it reports the cluster up.
start() {
  local name="$1"; shift
  mkdir -p "$work/$name"
  "$launcher" --config "$config" --psd "$psd" --psctl "$psctl" --any-ports \
    --run-dir "$work/$name" --state-dir "$work/$name/state" "$@" >"$work/$name.out" 2>&1 &
  launcher_pid=$!
  for _ in $(seq 1 600); do
    grep -q "logs and port files in" "$work/$name.out" && return 0
    kill -0 "$launcher_pid" 2>/dev/null || fail "$name: launcher exited: $(cat "$work/$name.out")"
    sleep 0.1
  done
  fail "$name: cluster not up in 60 s: $(cat "$work/$name.out")"
}

# The pid the launcher printed for shard K.
shard_pid() { sed -n "s/^psd-local: shard $2 .*(pid \([0-9]*\)).*/\1/p" "$work/$1.out"; }

# Waits up to 60 s for the launcher to exit; its exit status in launcher_rc.
wait_launcher() {
  for _ in $(seq 1 600); do
    if ! kill -0 "$launcher_pid" 2>/dev/null; then
      launcher_rc=0
      wait "$launcher_pid" || launcher_rc=$?
      launcher_pid=""
      return 0
    fi
    sleep 0.1
  done
  fail "launcher still running after 60 s"
}

# No process whose command line names the run directory of NAME.
no_cluster_left() {
  local left
  left="$(pgrep -af "$work/$1/" || true)"
  [ -z "$left" ] || fail "$1: processes left behind: $left"
}

# (a) COMMAND mode: kill a shard, then stop the launcher.
start a -- bash -c "echo \$\$ >'$work/a-command.pid'; exec sleep 600"
victim="$(shard_pid a 1)"
[ -n "$victim" ] || fail "a: no shard pid in $(cat "$work/a.out")"
kill -KILL "$victim"
sleep 0.5
kill -TERM "$launcher_pid"
wait_launcher
[ "$launcher_rc" = 143 ] || fail "a: launcher exited $launcher_rc after SIGTERM, not 143"
no_cluster_left a
command_pid="$(cat "$work/a-command.pid")"
if kill -0 "$command_pid" 2>/dev/null; then fail "a: the command (pid $command_pid) was left running"; fi
grep -q "cluster stopped" "$work/a.out" || fail "a: $(cat "$work/a.out")"

# (b) Without COMMAND: a crashed shard stops the whole cluster.
start b
kill -KILL "$(shard_pid b 0)"
wait_launcher
[ "$launcher_rc" = 1 ] || fail "b: launcher exited $launcher_rc after a member crashed, not 1"
grep -q "a cluster process exited" "$work/b.out" || fail "b: $(cat "$work/b.out")"
no_cluster_left b
echo "launcher_test: ok"
