#!/usr/bin/env python3
"""llama.cpp's logits for a GGUF file, compared with skymoe's on the same file.

  check_llamacpp_logits.py FILE.gguf --tokens 5,17,33 [--steps 4] [--skymoe build/skymoe]
      Prints llama.cpp's last-token logits (JSON). With --skymoe, also runs
      `skymoe generate --model FILE.gguf --prompt-ids ... --max-tokens STEPS --logits-out ...`,
      feeds skymoe's greedy tokens to llama.cpp, and prints the relative RMS difference of each
      step's logits and their maximum.

  check_llamacpp_logits.py --families tests/data/hf --skymoe build/skymoe [--out DIR]
      For every HF fixture directory under the path: copies it with a small byte-level BPE
      vocabulary (the fixtures have none, and llama.cpp needs one), runs `skymoe export gguf --type
      f32` (or --type), and compares as above. One line per family; exit 1 when llama.cpp refuses a file or a
      difference exceeds --tol.

  check_llamacpp_logits.py --vocabs tests/data/hf_tokenizers --skymoe build/skymoe
      For each byte-level tokenizer fixture (gpt2, qwen2, llama3, deepseek): a small random model
      (`skymoe init`) exported with that tokenizer.json, loaded by llama.cpp (vocabulary only),
      which tokenizes the held-out text and the edge cases; the ids are compared with the ones the
      `tokenizers` library gave (expected.json).

Needs llama-cpp-python (import llama_cpp); point LLAMA_CPP_LIB_PATH at a llama.cpp build's bin/
to use that build's libllama.so. The KV cache is kept in f32 so that f32 files compare to ~1e-6.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np


def llama_logits(path, tokens, rows):
    """llama.cpp's logits at the given positions after evaluating `tokens` (one batch)."""
    from llama_cpp import Llama

    kw = dict(model_path=path, n_ctx=max(64, len(tokens) + 8), n_batch=512, logits_all=True, verbose=False,
              n_threads=2, n_gpu_layers=0)
    try:
        llm = Llama(type_k=0, type_v=0, flash_attn=False, **kw)  # GGML_TYPE_F32 KV cache
    except TypeError:
        llm = Llama(**kw)
    llm.eval(tokens)
    scores = np.array(llm.scores[: llm.n_tokens], dtype=np.float64)
    return [scores[r] for r in rows]


SKY_DTYPE = "f32"  # skymoe generate --dtype (--sky-dtype)


def skymoe_logits(skymoe, path, prompt, steps):
    """skymoe's greedy tokens and each step's logits ([steps, vocab]) for the prompt."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "logits.f32")
        r = subprocess.run([skymoe, "generate", "--model", path, "--prompt-ids", ",".join(map(str, prompt)),
                            "--max-tokens", str(steps), "--logits-out", out, "--json", "--dtype", SKY_DTYPE],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"skymoe generate failed: {r.stderr.strip()}")
        gen = json.loads(r.stdout)["generated_ids"]
        logits = np.fromfile(out, dtype=np.float32).astype(np.float64)
    return gen, logits.reshape(len(gen), -1)


def rel_rms(a, b):
    return math.sqrt(float(np.sum((a - b) ** 2)) / max(float(np.sum(b ** 2)), 1e-300))


def compare(skymoe, path, prompt, steps):
    gen, sky = skymoe_logits(skymoe, path, prompt, steps)
    tokens = prompt + gen[:-1]
    rows = [len(prompt) - 1 + i for i in range(len(gen))]
    ref = llama_logits(path, tokens, rows)
    return [rel_rms(ref[i], sky[i]) for i in range(len(gen))]


# A byte-level BPE vocabulary of exactly `n` tokens (the fixtures' vocab_size): the byte-level
# spellings of newline and space, one merge, then printable ASCII.
def tiny_vocab(n):
    tokens = ["\u010a", "\u0120", "\u0120t"] + [chr(c) for c in range(0x21, 0x7f)]
    tokens = tokens[:n]
    while len(tokens) < n:
        tokens.append(f"<extra_{len(tokens)}>")
    return {
        "version": "1.0", "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": ["\u0120 t"]},
    }


def families(args):
    root = args.families
    out = args.out or tempfile.mkdtemp(prefix="llamacpp-check-")
    prompt = [int(t) for t in args.tokens.split(",")] if args.tokens else [5, 17, 33, 2, 60, 41, 9, 77, 12, 30]
    worst = 0.0
    failed = False
    for fam in sorted(os.listdir(root)):
        src = os.path.join(root, fam)
        if not os.path.isfile(os.path.join(src, "config.json")):
            continue
        d = os.path.join(out, fam)
        os.makedirs(d, exist_ok=True)
        for f in ("config.json", "model.safetensors"):
            shutil.copy(os.path.join(src, f), d)
        cfg = json.load(open(os.path.join(src, "config.json")))
        json.dump(tiny_vocab(cfg["vocab_size"]), open(os.path.join(d, "tokenizer.json"), "w"))
        json.dump({"add_bos_token": False}, open(os.path.join(d, "tokenizer_config.json"), "w"))
        gguf = os.path.join(out, fam + ".gguf")
        r = subprocess.run([args.skymoe, "export", "gguf", "--model", d, "--out", gguf, "--type", args.type],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{fam:18s} export failed: {r.stderr.strip()}")
            failed = True
            continue
        warnings = [l for l in r.stderr.splitlines() if "llama.cpp" in l]
        try:
            diffs = compare(args.skymoe, gguf, [t % cfg["vocab_size"] for t in prompt], args.steps)
        except Exception as e:  # llama.cpp refusing the file is a result, reported per family
            print(f"{fam:18s} llama.cpp: {type(e).__name__}: {str(e)[:300]}" + (f"  [{warnings[0]}]" if warnings else ""))
            failed = True
            continue
        m = max(diffs)
        worst = max(worst, m)
        flag = "" if m <= args.tol else "  EXCEEDS --tol"
        failed |= m > args.tol
        print(f"{fam:18s} max relative RMS over {len(diffs)} steps: {m:.3e}{flag}" +
              (f"  (export warned: {warnings[0][:160]})" if warnings else ""))
    print(f"worst: {worst:.3e}")
    return 1 if failed else 0


def vocabs(args):
    """llama.cpp's ids for the tokenizer fixtures' texts, from skymoe-exported gpt2 vocabularies."""
    from llama_cpp import Llama

    root = args.vocabs
    out = args.out or tempfile.mkdtemp(prefix="llamacpp-vocab-")
    here = os.path.dirname(os.path.abspath(root))
    text = open(os.path.join(root, "test_text.txt"), encoding="utf-8").read()
    edges = json.load(open(os.path.join(root, "edge_cases.json"), encoding="utf-8"))
    failed = False
    for name in ("gpt2", "qwen2", "llama3", "deepseek"):
        src = os.path.join(root, name)
        tok = json.load(open(os.path.join(src, "tokenizer.json"), encoding="utf-8"))
        n = max(list(tok["model"]["vocab"].values()) + [a["id"] for a in tok["added_tokens"]]) + 1
        cfg = json.load(open(os.path.join(here, "hf", "qwen3_moe", "config.json")))
        cfg.update(vocab_size=n, bos_token_id=0, eos_token_id=0)
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
        subprocess.run([args.skymoe, "init", "--config", os.path.join(d, "config.json"), "--out", d, "--seed", "1"],
                       check=True, capture_output=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            if os.path.exists(os.path.join(src, f)):
                shutil.copy(os.path.join(src, f), d)
        gguf = os.path.join(out, name + ".gguf")
        r = subprocess.run([args.skymoe, "export", "gguf", "--model", d, "--out", gguf, "--type", "f32"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{name:9s} export failed: {r.stderr.strip()}")
            failed = True
            continue
        try:
            llm = Llama(model_path=gguf, vocab_only=True, verbose=False)
        except Exception as e:
            print(f"{name:9s} llama.cpp: {e}")
            failed = True
            continue
        want = json.load(open(os.path.join(src, "expected.json"), encoding="utf-8"))
        pairs = [(text, want["test_text_ids"])] + [(t, c["ids"]) for t, c in zip(edges, want["cases"])]
        bad = [t for t, ids in pairs if llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) != ids]
        failed |= bool(bad)
        print(f"{name:9s} {len(pairs) - len(bad)}/{len(pairs)} texts give the tokenizers library's ids" +
              (f"; first differing: {bad[0][:60]!r}" if bad else ""))
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", nargs="?")
    ap.add_argument("--tokens", help="comma-separated prompt token ids")
    ap.add_argument("--steps", type=int, default=4, help="greedy steps compared (with --skymoe)")
    ap.add_argument("--skymoe", help="the skymoe binary, to compare with")
    ap.add_argument("--families", help="a directory of HF fixture directories (tests/data/hf)")
    ap.add_argument("--vocabs", help="a directory of tokenizer fixtures (tests/data/hf_tokenizers)")
    ap.add_argument("--out", help="--families/--vocabs: where to write the copies and .gguf files")
    ap.add_argument("--type", default="f32", help="--families: export gguf --type (f32, f16, q8_0)")
    ap.add_argument("--tol", type=float, default=1e-4, help="--families: largest relative RMS accepted")
    ap.add_argument("--sky-dtype", default="f32", help="skymoe generate --dtype: f32 (decode the file's blocks) or "
                    "auto (run them as stored, activations rounded to int8 as llama.cpp does)")
    args = ap.parse_args()
    global SKY_DTYPE
    SKY_DTYPE = args.sky_dtype
    if args.vocabs:
        if not args.skymoe:
            ap.error("--vocabs needs --skymoe")
        return vocabs(args)
    if args.families:
        if not args.skymoe:
            ap.error("--families needs --skymoe")
        return families(args)
    if not args.gguf or not args.tokens:
        ap.error("give FILE.gguf and --tokens")
    prompt = [int(t) for t in args.tokens.split(",")]
    if not args.skymoe:
        print(json.dumps(llama_logits(args.gguf, prompt, [len(prompt) - 1])[0].tolist()))
        return 0
    diffs = compare(args.skymoe, args.gguf, prompt, args.steps)
    print(json.dumps({"relative_rms_per_step": diffs, "max": max(diffs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
