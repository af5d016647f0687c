#!/usr/bin/env python3
"""skymoe vs llama.cpp on the same GGUF file and the same token windows.

Runs `skymoe eval --per-token` (each target's log-probability) and llama.cpp through
llama-cpp-python on the same windows of a token file (uint32 little-endian, as `skymoe tokenize`
writes it; or --random N ids drawn here), and prints the perplexity of each, their ratio and the
largest per-token log-probability difference. One window = S input tokens at offset k*S, scored on
the next S tokens, exactly as `skymoe eval --batch-size 1` lays them out; no BOS is added by either.

    LLAMA_CPP_LIB_PATH=.../llama.cpp/build/bin python scripts/check_llamacpp_ppl.py \
        --gguf model.gguf --data val.bin --seq-len 128 --windows 16

Needs numpy and llama-cpp-python (PyPI; never needed by the engine or CI). docs/gguf.md.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np


def skymoe_logprobs(bin_, gguf, data, seq, windows, threads):
    cmd = [bin_, "eval", "--model", gguf, "--data", data, "--seq-len", str(seq), "--batch-size", "1",
           "--batches", str(windows), "--per-token", "--threads", str(threads)]
    t0 = time.time()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    secs = time.time() - t0
    lp = np.zeros((windows, seq))
    tgt = np.zeros((windows, seq), dtype=np.int64)
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        lp[r["batch"], r["pos"]] = r["logprob"]
        tgt[r["batch"], r["pos"]] = r["target"]
    return lp, tgt, secs


def llamacpp_logprobs(gguf, ids, seq, windows, threads):
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=seq, n_batch=seq, n_ubatch=seq, logits_all=True, n_threads=threads,
                n_threads_batch=threads, verbose=False)
    lp = np.zeros((windows, seq))
    t0 = time.time()
    for k in range(windows):
        window = ids[k * seq: k * seq + seq + 1]
        llm.reset()
        llm.eval([int(t) for t in window[:seq]])
        logits = np.asarray(llm.scores[:seq], dtype=np.float64)
        m = logits.max(axis=1, keepdims=True)
        logz = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
        lp[k] = logits[np.arange(seq), window[1:]] - logz
    return lp, time.time() - t0


def plain_router_copy(path):
    import shutil

    import gguf

    out = path + ".plain-router.gguf"
    shutil.copyfile(path, out)
    r = gguf.GGUFReader(out, "r+")
    f = r.get_field("skymoe.moe.logits_norm")
    if f is not None:
        f.parts[f.data[0]][0] = 0  # the bool's one byte, in place in the map
        r.data.flush()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--data", help="token file (uint32 little-endian)")
    ap.add_argument("--random", type=int, metavar="VOCAB", help="draw the tokens here, uniformly below VOCAB")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skymoe", default=os.environ.get("SKYMOE", "build/skymoe"))
    ap.add_argument("--plain-router", action="store_true",
                    help="run a copy with skymoe.moe.logits_norm set to false: llama.cpp ignores that key and routes "
                         "with a plain softmax, so only then do both engines compute the same function")
    ap.add_argument("--max-ppl-ratio", type=float, help="exit 1 when the perplexities differ by more (e.g. 1.005)")
    ap.add_argument("--max-logprob-diff", type=float, help="exit 1 when a token's log-probability differs by more")
    a = ap.parse_args()
    if (a.data is None) == (a.random is None):
        ap.error("give one of --data and --random")
    n = a.windows * a.seq_len + 1
    if a.plain_router:
        a.gguf = plain_router_copy(a.gguf)
    if a.random:
        ids = np.random.default_rng(1).integers(0, a.random, n, dtype=np.uint32)
        a.data = a.gguf + ".check-tokens.bin"
        ids.tofile(a.data)
    ids = np.fromfile(a.data, dtype="<u4").astype(np.int64)
    if len(ids) < n:
        sys.exit(f"{a.data}: {len(ids)} tokens, fewer than {a.windows} windows of {a.seq_len} need ({n})")

    sky, tgt, sky_s = skymoe_logprobs(a.skymoe, a.gguf, a.data, a.seq_len, a.windows, a.threads)
    want = np.stack([ids[k * a.seq_len + 1: k * a.seq_len + a.seq_len + 1] for k in range(a.windows)])
    if not np.array_equal(tgt, want):
        sys.exit("skymoe eval's targets are not the windows this script assumes")
    ref, ref_s = llamacpp_logprobs(a.gguf, ids, a.seq_len, a.windows, a.threads)
    ppl_sky, ppl_ref = math.exp(-sky.mean()), math.exp(-ref.mean())
    diff = np.abs(sky - ref)
    ratio = ppl_sky / ppl_ref
    print(json.dumps({"gguf": os.path.basename(a.gguf), "tokens": int(sky.size), "ppl_skymoe": round(ppl_sky, 5),
                      "ppl_llamacpp": round(ppl_ref, 5), "ppl_ratio": round(ratio, 6),
                      "max_logprob_diff": float(diff.max()), "mean_logprob_diff": float(diff.mean()),
                      "skymoe_s": round(sky_s, 2), "llamacpp_s": round(ref_s, 2)}))
    bad = (a.max_ppl_ratio and max(ratio, 1 / ratio) > a.max_ppl_ratio) or (
        a.max_logprob_diff is not None and diff.max() > a.max_logprob_diff)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
