#!/usr/bin/env bash
# skymoe vs llama.cpp on the same model shape, same machine, same thread count, back to back.
# usage: bench/run_llamacpp_bench.sh LLAMA_BENCH [threads] [workdir]
#   LLAMA_BENCH: a llama-bench binary (llama.cpp is not packaged for Debian 12: build it from
#   source, e.g. `cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF && cmake --build build --target llama-bench`).
# Writes a random bench-moe model, exports it with `skymoe export gguf --type q8_0` (so this also
# checks that llama.cpp loads our GGUF), then runs `llama-bench -p 16,64,512 -n 128` and
# `skymoe bench infer --preset bench-moe --dtype fp8`. llama.cpp's pp16/pp64 are its throughput on
# 16- and 64-token batches, set beside skymoe's batched decode of 16 and 64 sequences.
set -euo pipefail
llama_bench=${1:?usage: bench/run_llamacpp_bench.sh LLAMA_BENCH [threads] [workdir]}
threads=${2:-2}
work=${3:-$(mktemp -d)}
bin=${SKYMOE:-build/skymoe}
export OMP_NUM_THREADS=$threads
if [ ! -f "$work/bench-moe-q8_0.gguf" ]; then
  $bin init --preset bench-moe --out "$work/bench-moe" --seed 1
  # llama.cpp needs a vocabulary; any SentencePiece model will do (ids past it become [PADi]).
  # The fortunes corpus is the one scripts/setup.sh installs for the quickstart.
  $bin tokenize --input /usr/share/games/fortunes --train-tokenizer "$work/bench-moe/tokenizer.model" \
    --vocab-size 2000 --out "$work/tokens.bin"
  $bin export gguf --model "$work/bench-moe" --out "$work/bench-moe-q8_0.gguf" --type q8_0
fi
echo "== skymoe (fp8 weights, bf16 LM head)"
$bin bench infer --preset bench-moe --dtype fp8 --threads "$threads"
echo "== llama.cpp (Q8_0)"
"$llama_bench" -m "$work/bench-moe-q8_0.gguf" -t "$threads" -p 16,64,512 -n 128 -r 3
