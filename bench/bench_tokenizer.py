#!/usr/bin/env python3
"""Encoding speed: skymoe's tokenizer.json support vs Hugging Face `tokenizers`, same machine.

Builds a few MB of the mixed corpus of tests/make_tokenizer_fixtures.py (English, Chinese, code,
emoji), trains 32k-piece BPE tokenizers on it in the layouts of Qwen2, Llama 3, DeepSeek V3 and
Mixtral, then times, on one thread, the encoding of every document:

  - HF `tokenizers`, Tokenizer.encode per document, RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
  - HF `tokenizers`, encode_batch over all documents, the same one thread (no per-call Python cost)
  - HF `tokenizers`, encode_batch with its default thread pool (every core)
  - skymoe, build/bench_tokenizer (Tokenizer::encode per document, one thread), which also checks
    that its ids equal HF's for every document

    python3 -m venv /tmp/hftok-venv && /tmp/hftok-venv/bin/pip install tokenizers
    cmake --build build --target bench_tokenizer
    /tmp/hftok-venv/bin/python bench/bench_tokenizer.py [--mb 4] [--build build]
"""
import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import make_tokenizer_fixtures as fx  # noqa: E402

HF_TIMER = r"""
import json, struct, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
docs = open(sys.argv[2], encoding="utf-8").read().split("\0")
mode, repeat = sys.argv[3], int(sys.argv[4])
best = 1e30
for _ in range(repeat):
    t0 = time.perf_counter()
    if mode == "batch":
        encs = tok.encode_batch(docs, add_special_tokens=False)
    else:
        encs = [tok.encode(d, add_special_tokens=False) for d in docs]
    best = min(best, time.perf_counter() - t0)
if len(sys.argv) > 5:
    with open(sys.argv[5], "wb") as f:
        for e in encs:
            f.write(struct.pack("<I", len(e.ids)))
            f.write(struct.pack("<%dI" % len(e.ids), *e.ids))
print(json.dumps({"seconds": best, "tokens": sum(len(e.ids) for e in encs)}))
"""


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def corpus(path, mb):
    docs, n = [], 0
    base = fx.mixed_docs(seed=7)
    while n < mb * 1e6:
        for d in base:
            docs.append(d)
            n += len(d.encode()) + 1
            if n >= mb * 1e6:
                break
    with open(path, "w", encoding="utf-8") as f:
        f.write("\0".join(docs))
    return docs


def train_all(docs, out, vocab):
    from tokenizers import normalizers, pre_tokenizers
    made = {}
    bl = lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)  # noqa: E731
    layouts = {
        "qwen2": (pre_tokenizers.Sequence([fx.split(fx.QWEN2_REGEX), bl()]), normalizers.NFC(), False),
        "llama3": (pre_tokenizers.Sequence([fx.split(fx.LLAMA3_REGEX), bl()]), None, True),
        "deepseek": (pre_tokenizers.Sequence([fx.split(r) for r in fx.DEEPSEEK_REGEXES] + [bl()]),
                     normalizers.Sequence([]), False),
    }
    for name, (pre, norm, ignore) in layouts.items():
        t = fx.byte_level_tokenizer(pre, norm, vocab, ["<|endoftext|>"], docs, ignore_merges=ignore)
        made[name] = os.path.join(out, name + ".json")
        t.save(made[name])
    v, m = fx.metaspace_vocab(docs, vocab)
    made["mixtral"] = os.path.join(out, "mixtral.json")
    fx.write_json(made["mixtral"], fx.sp_json(v, m, True, legacy=True))
    return made


def hf_time(tok_path, corpus_path, mode, repeat, ids_out=None, one_thread=True):
    env = dict(os.environ)
    if one_thread:
        env.update(RAYON_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    args = [sys.executable, "-c", HF_TIMER, tok_path, corpus_path, mode, str(repeat)] + ([ids_out] if ids_out else [])
    return json.loads(subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=4.0, help="corpus size in MB")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--work", default="/tmp/skymoe-tokbench")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated layouts")
    a = ap.parse_args()
    import tokenizers

    os.makedirs(a.work, exist_ok=True)
    cpath = os.path.join(a.work, "corpus.txt")
    t0 = time.time()
    docs = corpus(cpath, a.mb)
    size = os.path.getsize(cpath)
    made = train_all(docs, a.work, a.vocab)
    print(f"corpus {size / 1e6:.1f} MB, {len(docs)} documents; tokenizers trained in {time.time() - t0:.0f}s", file=sys.stderr)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; HF tokenizers {tokenizers.__version__}")
    print(f"| layout | tokens | HF encode, 1 thread | HF encode_batch, 1 thread | HF encode_batch, {os.cpu_count()} threads "
          f"| skymoe, 1 thread | skymoe / HF 1 thread (encode, batch) |")
    print("|---|---|---|---|---|---|---|")
    for name, path in made.items():
        if a.only and name not in a.only.split(","):
            continue
        ids = os.path.join(a.work, name + ".ids")
        single = hf_time(path, cpath, "single", a.repeat, ids)
        batch1 = hf_time(path, cpath, "batch", a.repeat)
        batch = hf_time(path, cpath, "batch", a.repeat, one_thread=False)
        r = subprocess.run([os.path.join(a.build, "bench_tokenizer"), path, cpath, ids, "--repeat", str(a.repeat)],
                           capture_output=True, text=True)
        if r.returncode not in (0, 1):
            sys.exit(f"bench_tokenizer failed: {r.stderr}")
        sky = json.loads(r.stdout)
        if sky["mismatched_documents"]:
            print(f"{name}: {sky['mismatched_documents']} documents differ from HF\n{r.stderr}", file=sys.stderr)
        hs, h1, hb = (size / r["seconds"] / 1e6 for r in (single, batch1, batch))
        sk = sky["mb_per_s"]
        print(f"| {name} | {sky['tokens']} | {hs:.2f} MB/s | {h1:.2f} | {hb:.2f} | {sk:.2f} | {sk / hs:.2f}x, {sk / h1:.2f}x"
              f"{'' if not sky['mismatched_documents'] else ' (ids differ!)'} |")


if __name__ == "__main__":
    main()
