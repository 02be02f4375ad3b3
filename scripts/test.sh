#!/usr/bin/env bash
# Installs what is missing, builds everything and runs the whole test suite
# (unit and integration tests, and a smoke run of the demo) through ctest;
# then, when the time left allows, the same code built with ASan, UBSan and
# libFuzzer (build-asan/, clang-14) and its tests.
#
#   scripts/test.sh                normal build and suite, then the sanitizer
#                                  run that fits the time left (see below)
#   scripts/test.sh --sanitize     only the sanitizer build and its whole suite
#                                  (fuzz smoke runs included)
#   scripts/test.sh --no-sanitize  only the normal build and suite
#
# Time: CI gives the whole script 90 minutes. PSD_TEST_BUDGET_MIN (default
# 85) is the budget counted from the start of this script. After the normal
# suite the script runs the whole sanitizer suite if the time left is at
# least PSD_SANITIZE_FULL_MIN (default 100: on 2 cores a cold sanitizer
# build takes 1.6-1.9 times the normal build's CPU, about 60 min, and the
# suite under ASan about 40; with a warm ccache 50 is enough), else the fuzz
# smoke runs and the unit tests of the decoders (common, checkpoint, store)
# if at least PSD_SANITIZE_SUBSET_MIN (default 20: about 15
# cold), else nothing; it says which and why.
# Any failure, normal or sanitizer, makes the exit status non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

START=$(date +%s)
MODE=auto
case "${1:-}" in
  "") ;;
  --sanitize) MODE=sanitize ;;
  --no-sanitize) MODE=normal ;;
  *) echo "usage: scripts/test.sh [--sanitize|--no-sanitize]" >&2; exit 2 ;;
esac
JOBS="${PSD_JOBS:-2}"
BUDGET_MIN="${PSD_TEST_BUDGET_MIN:-85}"
FULL_MIN="${PSD_SANITIZE_FULL_MIN:-100}"
SUBSET_MIN="${PSD_SANITIZE_SUBSET_MIN:-20}"
SAN_DIR=build-asan

elapsed_min() { echo $(( ($(date +%s) - START) / 60 )); }
say() { echo "test.sh [$(elapsed_min) min]: $*"; }

# The sanitizer build: clang (so that the same build has the fuzz targets),
# no CUDA (nvcc's host code is not instrumented).
sanitize_configure() {
  if [ ! -f "$SAN_DIR/build.ninja" ]; then
    cmake -S . -B "$SAN_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_COMPILER=clang++-14 -DPSD_SANITIZE=ON -DPSD_FUZZ=ON -DPSD_GPU=OFF
  fi
}

# The options ctest sets (tests/sanitizer/options.env), for binaries run here.
sanitize_env() {
  local line name value
  while IFS= read -r line; do
    case "$line" in [A-Z]*=*) ;; *) continue ;; esac
    name="${line%%=*}"
    value="${line#*=}"
    value="${value//\$\{PSD_SOURCE_DIR\}/$PWD}"
    if [ -z "${!name:-}" ]; then export "$name=$value"; fi
  done < tests/sanitizer/options.env
}

# Each step's failure returns (set -e does not apply inside `f || ...`).
sanitize_full() {
  sanitize_configure || return
  ninja -C "$SAN_DIR" -j "$JOBS" || return
  ctest --test-dir "$SAN_DIR" --output-on-failure -j "$JOBS" --timeout 900
}

# The decoders of outside bytes: their fuzz smoke runs and unit tests (those
# that need no server library: the cluster file is covered by its fuzz
# target), and the store's unit tests, among them the replicated writes'
# answers that threads race to resume (variable_store_replica_test), and
# the writes a move or backup replays (variable_store_move_test) and the
# bytes its log holds and sends (logged_write_test).
SUBSET_TESTS=(tensor_test stream_codec_test crc32c_test checkpoint_ordered_code_test
  checkpoint_table_test checkpoint_bundle_test checkpoint_fault_test checkpoint_fixtures_test
  variable_store_test variable_store_optimizer_test variable_store_replica_test variable_store_move_test
  embedding_table_test parallel_test logged_write_test request_window_test shard_lease_test
  channel_security_test)
sanitize_subset() {
  sanitize_configure || return
  local fuzz_targets
  fuzz_targets=$(sed -n 's/^psd_fuzz_target(\([a-z_0-9]*\).*/\1/p' tests/fuzz/CMakeLists.txt)
  # shellcheck disable=SC2086
  ninja -C "$SAN_DIR" -j "$JOBS" $fuzz_targets "${SUBSET_TESTS[@]}" || return
  local rc=0
  ctest --test-dir "$SAN_DIR" --output-on-failure -j "$JOBS" -L fuzz || rc=1
  sanitize_env
  for t in "${SUBSET_TESTS[@]}"; do
    # Run from the test's directory, as ctest does.
    (cd "$SAN_DIR/tests" && "./$t" --gtest_brief=1) || { echo "FAILED: $t (sanitizer build)"; rc=1; }
  done
  return $rc
}

bash scripts/install-deps.sh

if [ "$MODE" = sanitize ]; then
  say "sanitizer build ($SAN_DIR) and its whole suite"
  sanitize_full
  say "sanitizer suite passed"
  exit 0
fi

normal_rc=0
bash scripts/build.sh || normal_rc=$?
if [ "$normal_rc" -eq 0 ]; then
  ctest --test-dir build --output-on-failure -j "$JOBS" --timeout 600 || normal_rc=$?
fi
if [ "$normal_rc" -eq 0 ]; then say "normal suite passed"; else say "normal build or suite FAILED"; fi
if [ "$MODE" = normal ]; then exit "$normal_rc"; fi

left=$(( BUDGET_MIN - $(elapsed_min) ))
san_rc=0
if [ "$left" -ge "$FULL_MIN" ]; then
  say "$left of $BUDGET_MIN min left (>= $FULL_MIN): running the whole sanitizer suite"
  sanitize_full || san_rc=$?
  what="whole sanitizer suite"
elif [ "$left" -ge "$SUBSET_MIN" ]; then
  say "$left of $BUDGET_MIN min left (< $FULL_MIN for the whole sanitizer suite, >= $SUBSET_MIN):" \
      "running the fuzz smoke runs and the decoders' unit tests under ASan+UBSan"
  sanitize_subset || san_rc=$?
  what="sanitizer subset (fuzz smoke runs, decoder unit tests)"
else
  say "SKIPPED the sanitizer run: $left of $BUDGET_MIN min left, the smallest part needs" \
      "$SUBSET_MIN (PSD_SANITIZE_SUBSET_MIN); run scripts/test.sh --sanitize"
  what=""
fi
if [ -n "$what" ]; then
  if [ "$san_rc" -eq 0 ]; then say "$what passed"; else say "$what FAILED"; fi
fi
if [ "$normal_rc" -ne 0 ] || [ "$san_rc" -ne 0 ]; then exit 1; fi
exit 0
