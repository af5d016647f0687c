#!/usr/bin/env python3
"""Random differential check (by hand, not in CI: it needs HF `tokenizers` from PyPI): encodes
thousands of random strings built from tricky pieces (white space of every kind, CJK, combining
marks and jamo for NFC, contractions with odd case, emoji sequences, special-token fragments,
long runs) with every fixture of tests/data/hf_tokenizers, in skymoe (build/bench_tokenizer) and
in the library, and reports documents whose ids differ.

    /tmp/hftok-venv/bin/python tests/check_hf_tokenizer_random.py [--seeds 1,2,3] [--docs 4000]
"""
import argparse
import os
import random
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "data", "hf_tokenizers")

POOL = (list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789'\"!?.,;:-_()[]{}<>|/\\@#$%^&*+=~`")
        + [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2003", "\u0085", "\u200b", "\ufeff", "\u000b", "\u000c"]
        + list("你好世界中文测试床前明月光日本語のテキストカタカナ한국어ÄÖÜéèàçñßøæœ")
        + ["e\u0301", "A\u030a", "\u1100\u1161", "\u1100\u1161\u11a8", "ﬁ", "①", "Ω", "Å", "K", "ſ", "'s", "'S", "'ll", "'ſ"]
        + ["😀", "👍🏽", "👨‍👩‍👧", "🇨🇳", "❤️", "𝔘", "𐍈", "\x01", "\x1b", "\x7f", "٣", "Ⅷ", "½"]
        + ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "<mask>", "[INST]", "[/INST]", "<think>",
           "<|begin_of_text|>", "<｜begin▁of▁sentence｜>", "▁", "<|im_start|", "<0x41>"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--docs", type=int, default=4000)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    a = ap.parse_args()
    from tokenizers import Tokenizer

    names = sorted(d for d in os.listdir(FIXTURES) if os.path.isdir(os.path.join(FIXTURES, d)))
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for seed in map(int, a.seeds.split(",")):
            rng = random.Random(seed)
            docs = ["".join(rng.choice(POOL) * (1 if rng.random() < 0.7 else rng.randint(2, 30))
                            for _ in range(rng.randint(0, 40))) for _ in range(a.docs)]
            corpus = os.path.join(tmp, "corpus.txt")
            with open(corpus, "w", encoding="utf-8") as f:
                f.write("\0".join(docs))  # bench_tokenizer's document separator (not in POOL)
            for name in names:
                path = os.path.join(FIXTURES, name, "tokenizer.json")
                tok = Tokenizer.from_file(path)
                ids = os.path.join(tmp, name + ".ids")
                with open(ids, "wb") as f:
                    for d in docs:
                        e = tok.encode(d, add_special_tokens=False).ids
                        f.write(struct.pack("<I%dI" % len(e), len(e), *e))
                r = subprocess.run([os.path.join(a.build, "bench_tokenizer"), path, corpus, ids, "--repeat", "1"],
                                   capture_output=True, text=True)
                ok = r.returncode == 0
                failed += not ok
                print(f"seed {seed} {name}: {'ok' if ok else 'DIFFERS'} {r.stderr.strip()}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
