#!/usr/bin/env bash
# psctl ckpt save|list|latest|restore|policy against a local cluster brought
# up by deploy/local/psd-local, with its checkpoint directory in a fresh
# temp dir and a partitioned variable declared by a real trainer process.
# Usage: psctl_ckpt_test.sh PSD PSCTL DECLARE_HELPER LAUNCHER CONFIG
set -euo pipefail
psd="$1"; psctl="$2"; helper="$3"; launcher="$4"; config="$5"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/ckpt"
sed -e "s|^  dir: .*|  dir: $work/ckpt|" -e "s|^  max_to_keep: .*|  max_to_keep: 2|" \
  "$config" >"$work/cluster.yaml"

cat >"$work/steps.sh" <<STEPS
set -euo pipefail
c="\$PSD_COORDINATOR"
p() { "$psctl" --coordinator "\$c" "\$@"; }
fail() { echo "psctl_ckpt_test: \$*" >&2; exit 1; }
"$helper" --coordinator "\$c" --name test/emb --rows 6 --parts 2 >/dev/null
p ckpt policy | grep -q "max_to_keep: 2" || fail "policy: \$(p ckpt policy)"
p ckpt save --step 1 | grep -q "saved $work/ckpt/model.ckpt-1 " || fail "save 1"
p ckpt save --step 2 >/dev/null
p --json ckpt save --step 3 | grep -q '"prefix":"$work/ckpt/model.ckpt-3"' || fail "save --json"
[ ! -e "$work/ckpt/model.ckpt-1.index" ] || fail "max_to_keep 2 kept model.ckpt-1"
[ ! -e "$work/ckpt/model.ckpt-1.psd-meta" ] || fail "psd-meta of a dropped checkpoint kept"
[ -e "$work/ckpt/model.ckpt-2.data-00000-of-00002" ] || fail "data file of shard 0"
[ -e "$work/ckpt/model.ckpt-2.data-00001-of-00002" ] || fail "data file of shard 1"
grep -q '^model_checkpoint_path: "$work/ckpt/model.ckpt-3"' "$work/ckpt/checkpoint" || fail "state file"
[ "\$(p ckpt latest)" = "$work/ckpt/model.ckpt-3" ] || fail "latest: \$(p ckpt latest)"
p ckpt list >"$work/list.txt"
grep -q "model.ckpt-2  *2 " "$work/list.txt" || fail "list: \$(cat $work/list.txt)"
grep -q "model.ckpt-3  *3 .*latest" "$work/list.txt" || fail "list latest: \$(cat $work/list.txt)"
p --json ckpt list | grep -q '"step":3' || fail "list --json"
p ckpt inspect "$work/ckpt/model.ckpt-3" | grep -q "test/emb" || fail "inspect"
p ckpt restore --vars test/emb | grep -q "restored 1 variables" || fail "restore latest"
p ckpt restore "$work/ckpt/model.ckpt-2" | grep -q "restored 1 variables" || fail "restore prefix"
if p ckpt restore "$work/ckpt/model.ckpt-2" --map nope=test/emb 2>"$work/err.txt"; then
  fail "restore of a missing name succeeded"
fi
grep -q "^psctl: NOT_FOUND: .*not found in checkpoint" "$work/err.txt" || fail "error: \$(cat $work/err.txt)"
# Without a terminal (a pipe, a file): the final line only, no progress bar.
p ckpt save --step 4 >"$work/save.txt"
head -1 "$work/save.txt" | grep -q "^saved $work/ckpt/model.ckpt-4 " ||
  fail "save without a terminal: \$(cat -v "$work/save.txt")"
[ "\$(tr -d '\r\033' <"$work/save.txt")" = "\$(cat "$work/save.txt")" ] ||
  fail "progress bar without a terminal: \$(cat -v "$work/save.txt")"
p ckpt restore >"$work/restore.txt"
[ "\$(cat "$work/restore.txt")" = "\$(grep "^restored 1 variables" "$work/restore.txt")" ] ||
  fail "restore without a terminal: \$(cat -v "$work/restore.txt")"
[ "\$(tr -d '\r\033' <"$work/restore.txt")" = "\$(cat "$work/restore.txt")" ] ||
  fail "progress bar without a terminal: \$(cat -v "$work/restore.txt")"
# On a terminal (script gives psctl one) the bar's line is cleared before
# the final line.
if command -v script >/dev/null; then
  script -qec "$psctl --coordinator \$c ckpt save --step 5" /dev/null >"$work/tty.txt"
  grep -q "saved $work/ckpt/model.ckpt-5 " "$work/tty.txt" || fail "tty save: \$(cat -v "$work/tty.txt")"
  grep -q "\$(printf '\033')\\[K" "$work/tty.txt" || fail "no progress line on a terminal: \$(cat -v "$work/tty.txt")"
fi
# An embedding table saved by the shards (per part test/table/part_K-keys,
# -values, -freqs, -versions) is one entry: parts, rows, dim, dtypes.
"$helper" --coordinator "\$c" --name test/table --table-dim 4 --rows 5 --parts 2 >/dev/null
p ckpt save --step 6 >/dev/null
p ckpt inspect "$work/ckpt/model.ckpt-6" >"$work/inspect.txt"
grep -qE "^test/table +float32 +int64 +4 +2 +5\$" "$work/inspect.txt" || fail "table entry: \$(cat $work/inspect.txt)"
! grep -q "test/table/part_0-keys" "$work/inspect.txt" || fail "table tensors listed: \$(cat $work/inspect.txt)"
p ckpt inspect "$work/ckpt/model.ckpt-6" --tensor test/table --rows 5 >"$work/rows.txt"
[ "\$(grep -cE "^    [0-9]+ +1 +3 +\\{1, 1, 1, 1\\}\$" "$work/rows.txt")" = 5 ] ||
  fail "table sample rows: \$(cat $work/rows.txt)"
grep -qE "^    4000012 " "$work/rows.txt" || fail "key 4000012 not sampled: \$(cat $work/rows.txt)"
p --json ckpt inspect "$work/ckpt/model.ckpt-6" --tensor test/table |
  grep -q '"tables":\[{"name":"test/table","dtype":"float32","key_dtype":"int64","embedding_dim":4,"rows":5,"parts":\[' ||
  fail "table json: \$(p --json ckpt inspect "$work/ckpt/model.ckpt-6" --tensor test/table)"
STEPS

"$launcher" --config "$work/cluster.yaml" --psd "$psd" --psctl "$psctl" --state-dir "$work/state" \
  --run-dir "$work/run" --any-ports -- bash "$work/steps.sh"
echo "psctl_ckpt_test: OK"
