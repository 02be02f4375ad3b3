#!/usr/bin/env bash
# psctl ckpt inspect against TensorFlow-written checkpoints: the listing, the
# values, JSON, a directory's latest checkpoint, and one-line failures for a
# V1 checkpoint, a corrupt, truncated or missing data file and a missing
# checkpoint.
# Usage: psctl_ckpt_inspect_test.sh PSCTL FIXTURES_DIR
set -euo pipefail

PSCTL=$1
FIXTURES=$2
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
expect_contains() {  # haystack needle what
  grep -qF -- "$2" <<<"$1" || { echo "$1" >&2; fail "$3: missing '$2'"; }
}

MKL=$FIXTURES/serving_saved_model_half_plus_two_mkl/variables

out=$("$PSCTL" ckpt inspect "$MKL")
expect_contains "$out" "9 tensors, 1 data file" "listing"
expect_contains "$out" "NAME" "listing header"
grep -qE '^conv2d/kernel +float32 +\[1,1,1,1\]$' <<<"$out" || { echo "$out"; fail "conv2d/kernel row"; }
grep -qE '^a +float32 +\[\]$' <<<"$out" || { echo "$out"; fail "scalar row"; }

out=$("$PSCTL" ckpt inspect "$MKL.index" --values)
expect_contains "$out" "= {0.5}" "value of a"
expect_contains "$out" "= {-0.52239597}" "value of conv2d/kernel"
expect_contains "$out" "= {1.5779432}" "value of conv2d_2/kernel"

out=$("$PSCTL" ckpt inspect "$MKL" --json --values --tensor b)
[ "$out" = '{"prefix":"'"$MKL"'","num_shards":1,"version":{"producer":1,"min_consumer":0},"tensors":[{"name":"b","dtype":"float32","shape":[],"num_elements":1,"slices":[],"values":[2],"values_truncated":false}],"tables":[]}' ] \
  || fail "json: $out"

# A TF2 checkpoint with an int64 and a binary string tensor, then one with a
# Snappy-compressed index block.
out=$("$PSCTL" ckpt inspect "$FIXTURES/rust_regression_savedmodel/variables" --values --verify)
expect_contains "$out" "_CHECKPOINTABLE_OBJECT_GRAPH" "object graph"
expect_contains "$out" "(531 bytes)" "abbreviated string"
grep -qE '^optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE +int64 +\[\]$' <<<"$out" || fail "int64 row"
expect_contains "$out" "verified" "verify"
"$PSCTL" ckpt inspect "$FIXTURES/serving_saved_model_half_plus_two_tf2_cpu/variables" --verify >/dev/null \
  || fail "snappy fixture"

# V1: refused with one line and a non-zero exit.
if err=$("$PSCTL" ckpt inspect "$FIXTURES/serving_bad_half_plus_two_v1/export" 2>&1); then
  fail "V1 checkpoint accepted"
fi
expect_contains "$err" "V1 checkpoint format is not supported" "V1 message"
[ "$(wc -l <<<"$err")" -eq 1 ] || fail "V1 message is not one line: $err"

# A corrupt data file: the listing still works, reading values is DATA_LOSS.
cp "$MKL.index" "$TMP/ckpt.index"
cp "$MKL.data-00000-of-00001" "$TMP/ckpt.data-00000-of-00001"
chmod u+w "$TMP"/ckpt.*
printf '\x7f' | dd of="$TMP/ckpt.data-00000-of-00001" bs=1 seek=17 conv=notrunc status=none
"$PSCTL" ckpt inspect "$TMP/ckpt" >/dev/null || fail "listing of a checkpoint with corrupt data"
if err=$("$PSCTL" ckpt inspect "$TMP/ckpt" --values 2>&1); then fail "corrupt data accepted"; fi
expect_contains "$err" "DATA_LOSS" "corrupt data"
expect_contains "$err" "conv2d/kernel" "corrupt tensor named"
expect_contains "$err" "ckpt.data-00000-of-00001" "corrupt file named"

# A data file cut short, then missing: DATA_LOSS naming it, even for the
# listing (a restore would fail the same way).
cp "$MKL.index" "$TMP/short.index"
head -c 20 "$MKL.data-00000-of-00001" >"$TMP/short.data-00000-of-00001"
if err=$("$PSCTL" ckpt inspect "$TMP/short" 2>&1); then fail "truncated data file accepted"; fi
expect_contains "$err" "DATA_LOSS: truncated checkpoint data file $TMP/short.data-00000-of-00001" \
  "truncated data file"
rm "$TMP/short.data-00000-of-00001"
if err=$("$PSCTL" ckpt inspect "$TMP/short" 2>&1); then fail "missing data file accepted"; fi
expect_contains "$err" "short.data-00000-of-00001 is missing" "missing data file"

# A directory: its latest checkpoint, as restore takes it; without one, a
# message saying so (not "V1").
mkdir "$TMP/dir"
cp "$MKL.index" "$TMP/dir/model.ckpt-7.index"
cp "$MKL.data-00000-of-00001" "$TMP/dir/model.ckpt-7.data-00000-of-00001"
printf 'model_checkpoint_path: "model.ckpt-7"\n' >"$TMP/dir/checkpoint"
out=$("$PSCTL" ckpt inspect "$TMP/dir")
expect_contains "$out" "checkpoint $TMP/dir/model.ckpt-7: 9 tensors" "directory's latest"
mkdir "$TMP/empty"
if err=$("$PSCTL" ckpt inspect "$TMP/empty" 2>&1); then fail "empty directory accepted"; fi
expect_contains "$err" "NOT_FOUND: $TMP/empty is a directory with no latest checkpoint" "empty dir"

# A truncated index.
head -c 100 "$MKL.index" >"$TMP/ckpt.index"
if err=$("$PSCTL" ckpt inspect "$TMP/ckpt" 2>&1); then fail "truncated index accepted"; fi
expect_contains "$err" "DATA_LOSS" "truncated index"

if err=$("$PSCTL" ckpt inspect "$TMP/nothing" 2>&1); then fail "missing checkpoint accepted"; fi
expect_contains "$err" "NOT_FOUND" "missing checkpoint"

echo "psctl ckpt inspect: all checks passed"
