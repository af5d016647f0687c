#!/usr/bin/env bash
# skymoe vs llama.cpp on the same GGUF files, same machine, same thread count, back to back.
# usage: bench/run_llamacpp_bench.sh LLAMA_BIN_DIR [threads] [workdir] [presets] [types]
#   LLAMA_BIN_DIR: a llama.cpp build's bin/ with llama-bench and llama-quantize (llama.cpp is not
#   packaged for Debian 12; build it from source, e.g. from the llama-cpp-python sdist's
#   vendor/llama.cpp: `cmake -B build -DLLAMA_CURL=OFF && cmake --build build --target llama-bench
#   llama-quantize`). Never committed, never in CI.
#   presets: default "bench-moe bench-qwen3moe"; types: default "Q8_0 Q4_K_M".
# For each preset: a random model (`skymoe init`), a SentencePiece vocabulary (llama.cpp needs one;
# ids past it become [PADi]), `skymoe export gguf --type f16`, then llama.cpp's own llama-quantize
# to each type, so both engines read the very same file. Then, per file, `skymoe bench infer
# --model FILE --dtype auto` (the blocks run as stored; prefill 512, decode batch 1, 16 and 64
# sequences decoding together, memory bandwidth measured beside it) and `llama-bench -p 16,64,512
# -n 128` (its pp16/pp64 are its throughput on 16- and 64-token batches, set beside skymoe's 16 and
# 64 sequences).
set -euo pipefail
bin_dir=${1:?usage: bench/run_llamacpp_bench.sh LLAMA_BIN_DIR [threads] [workdir] [presets] [types]}
threads=${2:-2}
work=${3:-$(mktemp -d)}
presets=${4:-bench-moe bench-qwen3moe}
types=${5:-Q8_0 Q4_K_M}
sky=${SKYMOE:-build/skymoe}
export OMP_NUM_THREADS=$threads
mkdir -p "$work"
tok="$work/tokenizer.model"
if [ ! -f "$tok" ]; then
  # The fortunes corpus is the one scripts/setup.sh installs for the quickstart.
  $sky tokenize --input /usr/share/games/fortunes --train-tokenizer "$tok" --vocab-size 2000 --out "$work/tokens.bin"
fi
for p in $presets; do
  if [ ! -f "$work/$p-f16.gguf" ]; then
    $sky init --preset "$p" --out "$work/$p" --seed 1
    $sky export gguf --model "$work/$p" --tokenizer "$tok" --out "$work/$p-f16.gguf" --type f16
    rm -rf "${work:?}/$p"
  fi
  for t in $types; do
    f="$work/$p-$t.gguf"
    [ -f "$f" ] || "$bin_dir/llama-quantize" "$work/$p-f16.gguf" "$f" "$t" "$threads" > "$f.log" 2>&1
    echo "== $p $t: skymoe"
    $sky bench infer --model "$f" --dtype auto --threads "$threads"
    echo "== $p $t: llama.cpp"
    "$bin_dir/llama-bench" -m "$f" -t "$threads" -p 16,64,512 -n 128 -r 3
  done
done
