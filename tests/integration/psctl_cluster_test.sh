#!/usr/bin/env bash
# psctl status and vars list|show|get|evict against a local cluster brought up by
# deploy/local/psd-local (free ports, fresh state), with a variable declared
# and updated by a real trainer process. Also checks the launcher stops
# every process when its command ends.
# Usage: psctl_cluster_test.sh PSD PSCTL DECLARE_HELPER LAUNCHER CONFIG
set -euo pipefail
psd="$1"; psctl="$2"; helper="$3"; launcher="$4"; config="$5"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cat >"$work/steps.sh" <<STEPS
set -euo pipefail
c="\$PSD_COORDINATOR"
fail() { echo "psctl_cluster_test: \$*" >&2; exit 1; }
"$helper" --coordinator "\$c" --name test/emb --rows 6 --parts 2 >/dev/null
"$psctl" --coordinator "\$c" status >"$work/status.txt"
grep -q "1 variables" "$work/status.txt" || fail "status: \$(cat $work/status.txt)"
[ "\$(grep -c ' yes ' "$work/status.txt")" = 2 ] || fail "status: both shards live: \$(cat $work/status.txt)"
"$psctl" --coordinator "\$c" --json status | grep -q '"live":true' || fail "status --json"
# The helper's scatter (one op on each part's shard) reaches the shards' op
# counters, which their next heartbeats carry to the coordinator (bounded wait).
writes() { grep -o '"write_ops":[0-9]*' "$work/status.json" | cut -d: -f2 | awk '{n += \$1} END {print n + 0}'; }
for i in \$(seq 1 100); do
  "$psctl" --coordinator "\$c" --json status >"$work/status.json"
  [ "\$(writes)" -ge 2 ] && break
  sleep 0.1
done
[ "\$(writes)" -ge 2 ] || fail "status --json: write_ops: \$(cat $work/status.json)"
grep -q '"millis_since_traffic":[0-9]' "$work/status.json" || fail "status --json: millis_since_traffic"
"$psctl" --coordinator "\$c" status | grep -q "OPS READ/WRITE" || fail "status: ops column"
"$psctl" --coordinator "\$c" vars list | grep -q "test/emb  *float32  *\[6,4\]  *2 parts" || fail "vars list"
"$psctl" --coordinator "\$c" vars list | grep -q "test/emb  .*2 parts on axis 0  *dense " || fail "vars list: kind"
"$psctl" --coordinator "\$c" --json vars list | grep -q '"parts":2,"kind":"dense","lost_parts":0' || fail "vars list --json: kind"
if "$psctl" --coordinator "\$c" vars evict test/emb 2>"$work/evict.txt"; then fail "vars evict of a dense variable succeeded"; fi
grep -q "^psctl: INVALID_ARGUMENT: test/emb is a dense variable, not an embedding table" "$work/evict.txt" || fail "vars evict: \$(cat $work/evict.txt)"
"$psctl" --coordinator "\$c" vars list --collection local_variables | grep -q "^0 variables" || fail "vars list --collection"
"$psctl" --coordinator "\$c" vars show test/emb >"$work/show.txt"
grep -q "test/emb/part_0  *\[3,4\]  *\[0,0\]" "$work/show.txt" || fail "vars show: \$(cat $work/show.txt)"
grep -q "test/emb/part_1  *\[3,4\]  *\[3,0\]" "$work/show.txt" || fail "vars show: \$(cat $work/show.txt)"
[ "\$(grep -c ' initialized' "$work/show.txt")" = 2 ] || fail "vars show: initialized"
grep -q "^  kind:         dense$" "$work/show.txt" || fail "vars show: kind: \$(cat $work/show.txt)"
grep -q "^  initializer:  [a-z_]" "$work/show.txt" || fail "vars show: initializer: \$(cat $work/show.txt)"
"$psctl" --coordinator "\$c" --json vars show test/emb | grep -q '"initializer":"[a-z_]*","seed":' || fail "vars show --json: initializer"
"$psctl" --coordinator "\$c" vars get test/emb --max-values 5 >"$work/get.txt"
grep -q "test/emb float32\[6,4\] = {1, 1, 1, 1, 0, ... (19 more)}" "$work/get.txt" || fail "vars get: \$(cat $work/get.txt)"
"$psctl" --coordinator "\$c" --json vars get test/emb --max-values -1 | grep -q '"values_truncated":false' || fail "vars get --json"
if "$psctl" --coordinator "\$c" vars show nope 2>"$work/err.txt"; then fail "vars show of a missing name succeeded"; fi
[ "\$(wc -l <"$work/err.txt")" = 1 ] || fail "error is not one line"
grep -q "^psctl: NOT_FOUND: .*nope" "$work/err.txt" || fail "error: \$(cat $work/err.txt)"
STEPS

"$launcher" --config "$config" --psd "$psd" --psctl "$psctl" --state-dir "$work/state" \
  --run-dir "$work/run" --any-ports -- bash "$work/steps.sh"
# Every cluster process is gone.
if pgrep -f "$work/run" >/dev/null; then
  echo "psctl_cluster_test: cluster processes survived the launcher" >&2
  exit 1
fi
echo "psctl_cluster_test: OK"
