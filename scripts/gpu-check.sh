#!/usr/bin/env bash
# On a machine with a CUDA GPU: builds the CUDA kernel library's standalone
# test and benchmark (server/device/cuda/standalone; needs only CUDA, CMake
# and a C++ compiler) and runs both. Arguments go to the benchmark, e.g.
#   scripts/gpu-check.sh --rows 1000000
# Outputs are also written to $OUT (or the build directory): gpu.txt,
# gpu_kernels_test.txt, gpu_bench.txt. Exits non-zero if the test fails or
# finds no GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

build=${PSD_GPU_BUILD:-/tmp/psd-gpu-check}
out=${OUT:-$build}
mkdir -p "$build" "$out"
if ! command -v nvcc >/dev/null && [ -z "${CUDACXX:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S server/device/cuda/standalone -B "$build" -DCMAKE_BUILD_TYPE=Release "${generator[@]}" \
  || exit 1
cmake --build "$build" -j "$(nproc)" || exit 1

nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current \
  --format=csv 2>&1 | tee "$out/gpu.txt"
"$build/gpu_kernels_test" 2>&1 | tee "$out/gpu_kernels_test.txt"
test_rc=${PIPESTATUS[0]}
bench_rc=0
if [ "$test_rc" -ne 2 ]; then  # 2: no GPU, nothing to measure
  "$build/gpu_bench" "$@" 2>&1 | tee "$out/gpu_bench.txt"
  bench_rc=${PIPESTATUS[0]}
fi
echo "gpu_kernels_test exit $test_rc, gpu_bench exit $bench_rc"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
