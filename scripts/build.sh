#!/usr/bin/env bash
# Configures and builds psd into build/ (RelWithDebInfo, ccache when present).
# Extra arguments are passed to ninja (targets, -v, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS="${PSD_JOBS:-2}"
if [ ! -f build/build.ninja ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
ninja -C build -j "$JOBS" "$@"
