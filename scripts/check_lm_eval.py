#!/usr/bin/env python3
"""The comparison half of scripts/check_lm_eval.sh (run by it, in its venv).

  check_lm_eval.py data TEXT N HF_TOKENIZER OUT.jsonl
      the task's documents: N lines of TEXT, each split into a context (its first half) and a
      target (the rest), kept when the whole line is at most MAX_TOKENS tokens (so that lm_eval,
      whose max_length is the model's context, never truncates one)
  check_lm_eval.py compare SAMPLES.jsonl HF_TOKENIZER SERVER_URL SKYMOE MODEL WORK
      for every sample lm_eval logged: the ids it sent (encoded as lm_eval encodes them), scored
      by `skymoe eval --per-token` and by the server (echo + logprobs); prints the largest
      differences per token (server vs eval) and per sample (lm_eval's loglikelihood vs eval)
"""
import glob
import json
import os
import struct
import subprocess
import sys
import urllib.request

MAX_TOKENS = int(os.environ.get("MAX_TOKENS", "48"))


def hf_tokenizer(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path, use_fast=False)


def data(text, n, tok_path, out):
    tok = hf_tokenizer(tok_path)
    lines = []
    with open(text, encoding="utf-8", errors="replace") as f:
        for line in f:
            words = line.split()
            if len(words) < 6 or len(tok(" ".join(words), add_special_tokens=False).input_ids) > MAX_TOKENS:
                continue
            lines.append(words)
    with open(out, "w") as f:
        kept = 0
        for words in lines:
            half = len(words) // 2
            # The target starts with its space, as lambada's does: lm_eval puts nothing between.
            doc = {"context": " ".join(words[:half]), "target": " " + " ".join(words[half:])}
            f.write(json.dumps(doc) + "\n")
            kept += 1
            if kept == n:
                break


def encode_pair(tok, context, continuation):
    """The ids lm_eval sends for a (context, continuation) pair and the context's length, as its
    TemplateLM._encode_pair makes them for causal models: the context encoded alone, then what
    follows its length in the encoding of the whole text."""
    n = len(context) - len(context.rstrip())
    if n:
        continuation = context[-n:] + continuation
        context = context[:-n]
    whole = tok(context + continuation, add_special_tokens=False).input_ids
    ctx = tok(context, add_special_tokens=False).input_ids
    return ctx + whole[len(ctx):], len(ctx)


def eval_per_token(skymoe, model, ids, work):
    path = os.path.join(work, "sample.bin")
    with open(path, "wb") as f:
        f.write(struct.pack(f"<{len(ids)}I", *ids))
    out = subprocess.run([skymoe, "eval", "--model", model, "--data", path, "--seq-len", str(len(ids) - 1),
                          "--per-token", "--json", "--threads", "2"], check=True, capture_output=True, text=True).stdout
    rows = [json.loads(l) for l in out.splitlines() if '"pos"' in l]
    return {r["pos"] + 1: r["logprob"] for r in rows}  # position i + 1's token, scored by row i


def server_logprobs(url, ids):
    body = json.dumps({"prompt": [ids], "max_tokens": 0, "echo": True, "logprobs": 0, "temperature": 0}).encode()
    req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)["choices"][0]["logprobs"]["token_logprobs"]


def compare(samples_glob, tok_path, url, skymoe, model, work):
    tok = hf_tokenizer(tok_path)
    files = glob.glob(samples_glob, recursive=True)
    assert files, f"no lm_eval samples at {samples_glob}"
    samples = [json.loads(l) for f in files for l in open(f)]
    tok_diff = sample_diff = 0.0
    tokens = 0
    for s in samples:
        context, continuation = s["arguments"]["gen_args_0"]["arg_0"], s["arguments"]["gen_args_0"]["arg_1"]
        ll = float(s["resps"][0][0][0])  # lm_eval's loglikelihood of the continuation (logged as text)
        ids, ctxlen = encode_pair(tok, context, continuation)
        ref = eval_per_token(skymoe, model, ids, work)
        srv = server_logprobs(url, ids)
        for i in range(1, len(ids)):
            tok_diff = max(tok_diff, abs(srv[i] - ref[i]))
            tokens += 1
        sample_diff = max(sample_diff, abs(ll - sum(ref[i] for i in range(ctxlen, len(ids)))))
    print(f"samples {len(samples)}, tokens {tokens}")
    print(f"max |server - skymoe eval| per token: {tok_diff:.3g}")
    print(f"max |lm_eval loglikelihood - skymoe eval| per sample: {sample_diff:.3g}")
    return tok_diff < 1e-4 and sample_diff < 1e-3


if __name__ == "__main__":
    if sys.argv[1] == "data":
        data(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        sys.exit(0 if compare(*sys.argv[2:8]) else 1)
