#!/usr/bin/env bash
# Installs the Debian 12 packages skymoe needs. Idempotent: apt-get skips what is already there.
set -euo pipefail
PKGS=(
  build-essential cmake pkg-config
  libopenblas-openmp-dev   # fp32 GEMM (OpenMP build, so BLAS threads follow OMP_NUM_THREADS)
  libhwy-dev               # portable runtime-dispatched SIMD
  nlohmann-json3-dev       # config.json / safetensors headers / JSON output
  libcli11-dev             # command-line parsing
  libcpp-httplib-dev       # HTTP client of the server tests
  libsentencepiece-dev sentencepiece  # tokenizer
  libpcre2-dev             # tokenizer.json pre-tokenizer regexes (Unicode classes, lookahead), JIT-compiled
  libutf8proc-dev          # tokenizer.json Unicode normalizers (NFC for Qwen2); far smaller than ICU
  libfmt-dev               # formatting
  libgtest-dev libgmock-dev googletest  # unit tests
  libbenchmark-dev         # micro-benchmarks
  libopenmpi-dev openmpi-bin  # distributed training between CPU processes
  fortunes fortunes-zh     # embedded default corpus for the quickstart job
  python3-venv             # a venv (with its own pip) for the openai client test, below
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

# The client test (tests/openai_client_test.py, CTest label client) runs the official openai
# package, pinned in tests/openai_client_requirements.txt, from a venv under the build directory:
# Debian's python3 refuses `pip install` outside one, and the engine itself never needs Python.
# Installed again only when the pins change. Without network the test is skipped, not failed.
cd "$(dirname "$0")/.."
venv="${BUILD:-build}/pyenv"
req=tests/openai_client_requirements.txt
if [ -x "$venv/bin/python3" ] && cmp -s "$req" "$venv/requirements.txt"; then
  echo "setup: openai client present in $venv"
elif python3 -m venv "$venv" && "$venv/bin/python3" -m pip install -q --disable-pip-version-check -r "$req"; then
  cp "$req" "$venv/requirements.txt"
  echo "setup: openai client installed in $venv"
else
  echo "setup: WARNING: could not install the openai client into $venv; the client test will be skipped" >&2
fi
