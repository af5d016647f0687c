#!/usr/bin/env bash
# Installs the Debian 12 packages skymoe needs. Idempotent: apt-get skips what is already there.
set -euo pipefail
PKGS=(
  build-essential cmake pkg-config
  libopenblas-openmp-dev   # fp32 GEMM (OpenMP build, so BLAS threads follow OMP_NUM_THREADS)
  libhwy-dev               # portable runtime-dispatched SIMD
  nlohmann-json3-dev       # config.json / safetensors headers / JSON output
  libcli11-dev             # command-line parsing
  libcpp-httplib-dev       # HTTP server
  libsentencepiece-dev sentencepiece  # tokenizer
  libfmt-dev               # formatting
  libgtest-dev libgmock-dev googletest  # unit tests
  libbenchmark-dev         # micro-benchmarks
  libopenmpi-dev openmpi-bin  # distributed training between CPU processes
  fortunes fortunes-zh     # embedded default corpus for the quickstart job
  # The sanitizer build and fuzz targets (make test-sanitize / fuzz, run by CI): clang, its
  # sanitizer and libFuzzer runtimes (libclang-rt-14-dev) and its OpenMP runtime (libomp-dev).
  clang libclang-rt-14-dev libomp-dev
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
else
  echo "setup: all packages present"
fi
