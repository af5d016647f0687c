#!/usr/bin/env python3
"""llama.cpp's throughput on batches of 16 and 64 tokens with the logits of every token, beside
its usual last-token-only figure, through llama-cpp-python (never committed, never in CI).

`skymoe bench infer`'s "16/64 sequences decoding together" computes the LM head for every
sequence, as any batched decoder must; llama-bench's pp16/pp64 compute it for one token. This
times both variants of llama.cpp's prompt processing so the comparison can be made on equal work.

usage: LLAMA_CPP_LIB_PATH=LLAMA_BUILD/bin python bench/llamacpp_all_logits.py FILE.gguf... [--threads 2]
(llama-cpp-python installed with LLAMA_BUILD=OFF and pointed at a llama.cpp build, as
scripts/check_llamacpp_logits.py.)
"""
import argparse
import os
import sys
import time


def best_rate(llm, tokens, reps):
    best = float("inf")
    for r in range(reps + 1):  # the first pass warms up
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(tokens)
        dt = time.perf_counter() - t0
        if r > 0:
            best = min(best, dt)
    return len(tokens) / best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="GGUF files")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="16,64", help="batch sizes (tokens)")
    ap.add_argument("--reps", type=int, default=5, help="timed passes per size (best is kept)")
    a = ap.parse_args()
    try:
        sizes = [int(s) for s in a.sizes.split(",")]
    except ValueError:
        sys.exit(f"llamacpp_all_logits: --sizes {a.sizes!r} is not a comma-separated list of integers")
    for path in a.files:
        if not os.path.isfile(path):
            sys.exit(f"llamacpp_all_logits: no such file: {path}")
    try:
        from llama_cpp import Llama
    except Exception as e:  # not installed, or its shared library not found (LLAMA_CPP_LIB_PATH)
        sys.exit(f"llamacpp_all_logits: cannot load llama-cpp-python: {e}")
    for path in a.files:
        for logits_all in (False, True):
            llm = Llama(model_path=path, n_threads=a.threads, n_threads_batch=a.threads, n_ctx=1024,
                        n_batch=max(sizes), logits_all=logits_all, verbose=False)
            vocab = llm.n_vocab()
            for n in sizes:
                tokens = [(i * 37 + 11) % min(vocab - 3, 2000) + 3 for i in range(n)]
                rate = best_rate(llm, tokens, a.reps)
                what = "every token's logits" if logits_all else "last token's logits"
                print(f"{os.path.basename(path)}: pp{n}, {what}: {rate:.1f} tokens/s", flush=True)
            del llm


if __name__ == "__main__":
    main()
