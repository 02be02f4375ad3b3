#!/usr/bin/env bash
# psctl vars move, shard drain and rebalance against a local cluster brought
# up by deploy/local/psd-local (free ports, fresh state): parts change shards,
# a drained shard ends empty and is marked so, a rebalance spreads them back,
# and the values read the same throughout. While a move waits, psctl shows
# its progress: a bar redrawn in place on a terminal (run under script(1)),
# plain lines on stderr elsewhere (stdout keeps only the result lines).
# Usage: psctl_move_test.sh PSD PSCTL DECLARE_HELPER LAUNCHER CONFIG
set -euo pipefail
psd="$1"; psctl="$2"; helper="$3"; launcher="$4"; config="$5"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cat >"$work/steps.sh" <<STEPS
set -euo pipefail
c="\$PSD_COORDINATOR"
p() { "$psctl" --coordinator "\$c" "\$@"; }
fail() { echo "psctl_move_test: \$*" >&2; exit 1; }
"$helper" --coordinator "\$c" --name m/a --rows 8 --parts 2 >/dev/null
"$helper" --coordinator "\$c" --name m/b --rows 8 --parts 2 >/dev/null
p vars get m/a --max-values -1 >"$work/a0.txt"
p vars get m/b --max-values -1 >"$work/b0.txt"
shard_of() { p --json vars show "\$1" | grep -o "\"name\":\"\$2\"[^}]*\"shard\":[0-9]*" | grep -o '[0-9]*\$'; }
from=\$(shard_of m/a m/a/part_0) || fail "vars show --json: \$(p --json vars show m/a)"
to=\$((1 - from))
p vars move m/a/part_0 --to "\$to" >"$work/move.txt" 2>"$work/move_err.txt"
grep -q "^moved m/a/part_0 from shard \$from to shard \$to: " "$work/move.txt" || fail "vars move: \$(cat $work/move.txt)"
# Not a terminal: no bar on stdout; progress lines, if the move lasted
# long enough to show any, are plain ones on stderr.
if grep -q \$'[\r\033]' "$work/move.txt" "$work/move_err.txt"; then fail "control characters off a terminal: \$(cat -A $work/move.txt $work/move_err.txt)"; fi
if grep -v "^moving m/a/part_0 from shard \$from to shard \$to: \(starting\|copying\|forwarding\|switching\)" "$work/move_err.txt"; then fail "progress lines: \$(cat $work/move_err.txt)"; fi
[ "\$(shard_of m/a m/a/part_0)" = "\$to" ] || fail "vars show after the move: \$(p vars show m/a)"
if p vars move m/a/part_0 --to 9 2>"$work/err.txt"; then fail "a move to a missing shard succeeded"; fi
grep -q "^psctl: NOT_FOUND: .*shard 9 is not registered" "$work/err.txt" || fail "move error: \$(cat $work/err.txt)"
# On a terminal: the progress bar, redrawn in place and cleared before the
# result line.
script -qec "'$psctl' --coordinator '\$c' vars move m/a/part_0 --to \$from" /dev/null >"$work/tty.txt" </dev/null
grep -q \$'\r\033\\[Kmoving' "$work/tty.txt" || fail "no progress bar on a terminal: \$(cat -A $work/tty.txt)"
grep -q \$'\r\033\\[Kmoved m/a/part_0 from shard '"\$to to shard \$from: " "$work/tty.txt" || fail "the bar is not cleared before the result: \$(cat -A $work/tty.txt)"
[ "\$(shard_of m/a m/a/part_0)" = "\$from" ] || fail "vars show after the move back: \$(p vars show m/a)"
# Drain shard 0: every part goes to shard 1, and shard 0 shows drained.
p shard drain 0 >"$work/drain.txt"
grep -q "^shard 0 is drained" "$work/drain.txt" || fail "drain: \$(cat $work/drain.txt)"
p --json status | grep -q '"id":0,[^}]*"placed_parts":0,[^}]*"drained":true' || fail "status after drain: \$(p --json status)"
p status | grep -q " yes (drained) " || fail "status table: \$(p status)"
if p rebalance --dry-run 2>"$work/err.txt"; then fail "rebalance onto a drained shard"; fi
grep -q "needs two live, undrained shards; there are 1" "$work/err.txt" || fail "a drained shard takes nothing: \$(cat $work/err.txt)"
# Back into use: a rebalance spreads the parts again.
p shard drain 0 --undrain >/dev/null
p rebalance --dry-run >"$work/plan.txt"
grep -q "^PART  *FROM  *TO  *BYTES" "$work/plan.txt" || fail "rebalance plan: \$(cat $work/plan.txt)"
p rebalance >"$work/rebalance.txt"
grep -q "^moved .* from shard 1 to shard 0: " "$work/rebalance.txt" || fail "rebalance: \$(cat $work/rebalance.txt)"
p --json status | grep -q '"id":0,[^}]*"placed_parts":[1-9]' || fail "status after rebalance: \$(p --json status)"
p vars get m/a --max-values -1 | cmp -s - "$work/a0.txt" || fail "m/a changed across the moves"
p vars get m/b --max-values -1 | cmp -s - "$work/b0.txt" || fail "m/b changed across the moves"
STEPS

"$launcher" --config "$config" --psd "$psd" --psctl "$psctl" --state-dir "$work/state" \
  --run-dir "$work/run" --any-ports -- bash "$work/steps.sh"
echo "psctl_move_test: OK"
