#!/usr/bin/env bash
# Installs what is missing, builds everything and runs the whole test suite
# (unit and integration tests, and a smoke run of the demo) through ctest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash scripts/build.sh
ctest --test-dir build --output-on-failure -j "${PSD_JOBS:-2}" --timeout 600
