#!/usr/bin/env bash
# Installs the Debian 12 packages psd needs to build and test, if any are
# missing. Idempotent and non-interactive; run as root (or with sudo).
set -euo pipefail

PACKAGES=(
  g++ cmake ninja-build pkgconf ccache git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libboost-dev libspdlog-dev libcli11-dev libyaml-cpp-dev
  libgtest-dev libgmock-dev
  libsnappy-dev libleveldb-dev
  nlohmann-json3-dev
  clang-14 libclang-rt-14-dev libfuzzer-14-dev
  pybind11-dev python3-dev python3-numpy python3-pytest python3-sklearn
  python3-yaml prometheus
  # Tests only: headless Chromium loads the coordinator's console (ctest console_browser).
  chromium
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-deps: missing ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
