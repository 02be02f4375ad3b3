#!/usr/bin/env bash
# On a machine with a CUDA GPU: builds the CUDA kernel library's standalone
# test and benchmark (server/device/cuda/standalone; needs only CUDA, CMake
# and a C++ compiler) and runs both, then the one-rank NCCL check where NCCL
# is found (CUDA's tree, $NCCL_HOME, or the Python package nvidia.nccl that
# PyTorch installs). Arguments go to the benchmark, e.g.
#   scripts/gpu-check.sh --rows 1000000
# Outputs are also written to $OUT (or the build directory): gpu.txt,
# gpu_kernels_test.txt, gpu_bench.txt, nccl_check.txt. Exits non-zero if a
# test fails or finds no GPU.
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
nccl=()
if [ -z "${NCCL_HOME:-}" ]; then
  root=$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null) \
    && [ -n "$root" ] && nccl=(-DPSD_NCCL_ROOT="$root")
fi
cmake -S server/device/cuda/standalone -B "$build" -DCMAKE_BUILD_TYPE=Release "${generator[@]}" \
  "${nccl[@]}" || exit 1
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
nccl_rc=0
if [ -x "$build/nccl_one_rank_check" ]; then
  root_lib=$(sed -n 's/^PSD_NCCL_LIBRARY:FILEPATH=//p' "$build/CMakeCache.txt")
  LD_LIBRARY_PATH="$(dirname "$root_lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$build/nccl_one_rank_check" 2>&1 | tee "$out/nccl_check.txt"
  nccl_rc=${PIPESTATUS[0]}
else
  echo "NCCL not found: the one-rank NCCL check was not built" | tee "$out/nccl_check.txt"
fi
echo "gpu_kernels_test exit $test_rc, gpu_bench exit $bench_rc, nccl_one_rank_check exit $nccl_rc"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$nccl_rc" -eq 0 ]
