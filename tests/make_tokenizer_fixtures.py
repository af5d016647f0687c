#!/usr/bin/env python3
"""Writes the fixtures of tests/test_hf_tokenizer.cpp into tests/data/hf_tokenizers/.

Run once with Hugging Face `tokenizers` from PyPI (never an engine dependency); the output is
committed, so CI needs neither PyPI nor this script:

    python3 -m venv /tmp/hftok-venv && /tmp/hftok-venv/bin/pip install tokenizers
    /tmp/hftok-venv/bin/python tests/make_tokenizer_fixtures.py

It trains tiny BPE tokenizers (vocabularies of a few hundred pieces, so the files stay small) on a
corpus mixing English, Chinese, code and emoji, each with the configuration of a model family:

    qwen2     NFC normalizer, Split(Qwen2 regex) + ByteLevel, merges as "a b" strings
    llama3    Split(Llama 3 regex) + ByteLevel, ignore_merges, [a, b] merges, TemplateProcessing
    deepseek  empty normalizer Sequence, Sequence of three Splits (digits, CJK, words) + ByteLevel
    gpt2      ByteLevel alone (its own GPT-2 regex), an lstrip/rstrip added token
    mixtral   Prepend + Replace normalizers, byte_fallback, Replace/ByteFallback/Fuse/Strip decoders,
              normalized added tokens
    llama2    Metaspace pre-tokenizer (prepend_scheme first, no split) and decoder, byte_fallback
    unkfuse   the llama2 vocabulary without byte_fallback: unknown characters fuse into one <unk>;
              Metaspace with prepend_scheme always and split
    splits    GPT-2's vocabulary behind Splits with every behavior, invert, Digits and a ByteLevel
              that adds a prefix space

and records the ids HF `tokenizers` gives for a held-out text (test_text.txt) and for edge cases
(edge_cases.json) in expected.json next to each tokenizer.json. The regexes are the ones those families' tokenizer.json files carry.
"""
import glob
import json
import os
import random
import re
import sys

CORPUS_SOURCES = {
    "english": ["fortunes", "computers", "literature", "science", "wisdom", "linux", "humorists"],
    "chinese": ["chinese", "tang300", "song100"],
}
FORTUNES = "/usr/share/games/fortunes"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
DEEPSEEK_REGEXES = [
    r"\p{N}{1,3}",
    "[一-龥\u3040-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+|"
    r" ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
]

EMOJI = ["😀", "🚀", "👍🏽", "👨‍👩‍👧‍👦", "🇨🇳", "🇺🇸", "❤️", "🎉", "🤖", "☕", "🧪", "🐍", "✅", "🔥", "🌏"]


def read_docs(name):
    with open(os.path.join(FORTUNES, name), encoding="utf-8", errors="replace") as f:
        text = ANSI.sub("", f.read())
    return [d.strip("\n") for d in text.split("\n%\n") if d.strip()]


def code_docs():
    """Python standard-library sources, cut into function-sized chunks (stable on Debian 12)."""
    docs = []
    for path in sorted(glob.glob("/usr/lib/python3*/*.py"))[:60]:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        docs += [c for c in re.split(r"\n(?=def |class )", text) if 40 < len(c) < 4000]
    return docs


def emoji_docs(rng, n):
    words = ["ship it", "great", "tests pass", "build", "coffee", "bug", "deploy", "你好", "谢谢", "OK"]
    return ["".join(rng.choice(EMOJI) + (" " + rng.choice(words) if rng.random() < 0.6 else "")
                    for _ in range(rng.randint(1, 6))) for _ in range(n)]


def mixed_docs(seed=1):
    """All documents of the mixed corpus, shuffled with a fixed seed."""
    rng = random.Random(seed)
    docs = []
    for kind, files in CORPUS_SOURCES.items():
        for name in files:
            if os.path.exists(os.path.join(FORTUNES, name)):
                docs += read_docs(name)
    code = code_docs()
    docs += code
    docs += emoji_docs(rng, len(docs) // 20)
    rng.shuffle(docs)
    return docs


def take(docs, max_bytes):
    out, n = [], 0
    for d in docs:
        if n >= max_bytes:
            break
        out.append(d)
        n += len(d.encode()) + 1
    return out


EDGE_CASES = [
    "",
    " ",
    "   ",
    "\n",
    "\n\n\n",
    "\r\n",
    "\t\tindented\n",
    "Hello world",
    " Hello world",
    "Hello  world   ",
    "I'm sure they'll say it's OK; WE'LL SEE, he'D said.",
    "don’t curly quotes",
    "'ſ long s and K Kelvin",
    "12345678901234567890",
    "3.14159 and 1,000,000 and ٣٤٥ Arabic digits and ⅷ",
    "x=1;y=2;if(x<y){return x+y;}",
    "def f(a, b):\n    return a ** b  # power\n\n\nprint(f(2, 10))\n",
    "    four leading spaces and trailing    ",
    "tabs\tand\u000bvertical\u000cfeed",
    "nbsp\u00a0here and ideographic\u3000space and em\u2003space and nel\u0085end",
    "zero\u200bwidth and bom\ufeffhere",
    "你好，世界！今天天气很好。",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 텍스트",
    "mixed中文English混合123数字",
    "emoji 😀🚀 family 👨‍👩‍👧‍👦 flag 🇨🇳 skin 👍🏽 heart ❤️",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝟙𝟚𝟛 and 𐍈 gothic",
    "e\u0301 combining vs \u00e9 precomposed; A\u030a vs \u00c5; \u1100\u1161 jamo",
    "ﬁ ligature and ① circled and ＦＵＬＬ width",
    "Ω ohm sign and Å angstrom sign",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    # Pieces of more than 64 symbols (a second merging path in skymoe).
    "a" * 300,
    "Supercalifragilisticexpialidocious" * 4,
    "床前明月光疑是地上霜举头望明月低头思故乡" * 4,
    " " * 100 + "x",
    "the the the the the the the the",
    "\x00\x01\x1b[31mcontrol\x7f",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text<|endoftext|>",
    "<|begin_of_text|>Hello<|end_of_text|>",
    "<s>[INST] hi [/INST]</s>",
    "a <mask> b <mask>c",
    "<｜begin▁of▁sentence｜>你好<｜end▁of▁sentence｜>",
    "<think>reasoning</think> answer",
    "<|im_start|",
    "trailing special<|im_end|>",
]


def edge_cases():
    return EDGE_CASES


def corpus_split():
    docs = mixed_docs()
    heldout = docs[:40]
    train = take(docs[40:], 400_000)
    test_text = "\n\n".join(take(heldout, 5_000))
    return train, test_text


def byte_level_tokenizer(pre, normalizer, vocab_size, specials, train, ignore_merges=False):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(train, trainer)
    return tok


def split(regex):
    from tokenizers import Regex, pre_tokenizers
    return pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)


def metaspace_vocab(train, vocab_size):
    """A SentencePiece-style BPE vocabulary: <unk> <s> </s>, the 256 <0xNN> byte pieces, then the
    trained pieces (what Mixtral's and Llama 2's tokenizer.json hold), and its merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    # A small alphabet, so rare (mostly Chinese) characters go through byte fallback.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=200, show_progress=False, min_frequency=2)
    tok.train_from_iterator(train, trainer)
    model = json.loads(tok.to_str())["model"]
    trained = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for piece, _ in trained:
        if piece not in vocab:
            vocab[piece] = len(vocab)
    return vocab, model["merges"]


def added(content, id, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False):
    return {"id": id, "content": content, "single_word": single_word, "lstrip": lstrip, "rstrip": rstrip,
            "normalized": normalized, "special": special}


def sp_json(vocab, merges, byte_fallback, legacy, extra_added=()):
    """tokenizer.json in the two layouts SentencePiece BPE models come in: `legacy` is Mixtral's and
    Llama 2's (Prepend + Replace normalizers, no pre-tokenizer, Replace/ByteFallback/Fuse/Strip
    decoders); otherwise the Metaspace pre-tokenizer of newer conversions, with Metaspace/ByteFallback/
    Fuse decoders."""
    j = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added("<unk>", 0), added("<s>", 1), added("</s>", 2)] + [
            added(c, len(vocab) + i, special=False, normalized=True) for i, c in enumerate(extra_added)],
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": byte_fallback,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }
    if legacy:
        j["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
        j["pre_tokenizer"] = None
        j["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    else:
        j["normalizer"] = None
        j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
        j["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False},
            {"type": "ByteFallback"}, {"type": "Fuse"}]}
    # Key order as HF writes it.
    order = ["version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer", "post_processor",
             "decoder", "model"]
    return {k: j[k] for k in order}


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


def main():
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    import tokenizers

    out_root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "data", "hf_tokenizers")
    os.makedirs(out_root, exist_ok=True)
    train, test_text = corpus_split()
    with open(os.path.join(out_root, "test_text.txt"), "w", encoding="utf-8") as f:
        f.write(test_text)
    write_json(os.path.join(out_root, "edge_cases.json"), edge_cases())

    specs = {}
    # Qwen2: NFC, its regex, merges written in the older "a b" form.
    qwen_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    t = byte_level_tokenizer(pre_tokenizers.Sequence([split(QWEN2_REGEX), pre_tokenizers.ByteLevel(
        add_prefix_space=False, trim_offsets=False, use_regex=False)]), normalizers.NFC(), 600, qwen_specials, train)
    t.add_tokens([tokenizers.AddedToken("<think>", special=False, normalized=False),
                  tokenizers.AddedToken("</think>", special=False, normalized=False)])
    j = json.loads(t.to_str())
    j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
    specs["qwen2"] = (j, {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})

    # Llama 3: its regex, ignore_merges, reserved special tokens, a TemplateProcessing post-processor.
    llama3_specials = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)]
    t = byte_level_tokenizer(pre_tokenizers.Sequence([split(LLAMA3_REGEX), pre_tokenizers.ByteLevel(
        add_prefix_space=False, trim_offsets=True, use_regex=False)]), None, 640, [], train, ignore_merges=True)
    t.add_special_tokens(llama3_specials)
    bot = t.token_to_id("<|begin_of_text|>")
    t.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                                     special_tokens=[("<|begin_of_text|>", bot)])
    specs["llama3"] = (json.loads(t.to_str()), {"bos_token": "<|begin_of_text|>",
                                                 "eos_token": {"content": "<|end_of_text|>", "special": True}})

    # DeepSeek V3: three Splits and ByteLevel without its own regex; an empty normalizer Sequence.
    ds_specials = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"]
    t = byte_level_tokenizer(pre_tokenizers.Sequence([split(r) for r in DEEPSEEK_REGEXES] + [
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]),
        normalizers.Sequence([]), 600, ds_specials, train)
    specs["deepseek"] = (json.loads(t.to_str()), {"bos_token_id": 0, "eos_token_id": 1})  # config.json, no tokenizer_config

    # GPT-2: ByteLevel with its built-in regex; a RoBERTa-style <mask> that swallows spaces around it.
    t = byte_level_tokenizer(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), None, 560,
                             ["<|endoftext|>"], train)
    t.add_special_tokens([tokenizers.AddedToken("<mask>", lstrip=True, rstrip=True)])
    specs["gpt2"] = (json.loads(t.to_str()), {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})

    # The Split behaviors and options no family above uses, on GPT-2's vocabulary (held-out text
    # shortened to keep the file small).
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d{4,}"), behavior="removed"),
        pre_tokenizers.Split("-", behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex("[,;]"), behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"\s+"), behavior="contiguous", invert=True),
        pre_tokenizers.Split(Regex(r"[.!?]"), behavior="isolated", invert=True),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)])
    specs["splits"] = (json.loads(t.to_str()), {"eos_token": "<|endoftext|>"})

    vocab, merges = metaspace_vocab(train, 700)
    # [INST] is matched after normalization, as "▁[INST]".
    specs["mixtral"] = (sp_json(vocab, merges, True, legacy=True, extra_added=["[INST]", "[/INST]"]),
                        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    specs["llama2"] = (sp_json(vocab, merges, True, legacy=False), {"bos_token": "<s>", "eos_token": "</s>"})
    unkfuse = sp_json(vocab, merges, False, legacy=False)
    unkfuse["pre_tokenizer"].update(prepend_scheme="always", split=True)
    unkfuse["decoder"]["decoders"][0].update(prepend_scheme="always", split=True)
    specs["unkfuse"] = (unkfuse, {"bos_token_id": 1, "eos_token_id": [2, 0]})

    for name, (tj, cfg) in specs.items():
        d = os.path.join(out_root, name)
        os.makedirs(d, exist_ok=True)
        write_json(os.path.join(d, "tokenizer.json"), tj)
        # bos/eos: tokenizer_config.json's token names, or (without one) the model config.json's ids.
        write_json(os.path.join(d, "config.json" if "bos_token_id" in cfg else "tokenizer_config.json"), cfg)
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))  # what a user loads: the written file
        # The held-out text is stored once (test_text.txt); the edge cases carry their text.
        text = test_text[:1500] if name == "splits" else test_text
        text_ids = tok.encode(text, add_special_tokens=False).ids
        # Edge cases in the order of edge_cases.json; "decoded" only where it is not the text itself.
        cases = []
        for s in edge_cases():
            ids = tok.encode(s, add_special_tokens=False).ids
            decoded = tok.decode(ids, skip_special_tokens=True)
            cases.append({"ids": ids} if decoded == s else {"ids": ids, "decoded": decoded})
        write_json(os.path.join(d, "expected.json"), {
            "tokenizers_version": tokenizers.__version__,
            "test_text_ids": text_ids,
            "test_text_chars": len(text),  # a prefix of test_text.txt, in code points
            "test_text_decodes_to_itself": tok.decode(text_ids, skip_special_tokens=True) == text,
            "cases": cases})
        print(f"{name}: vocab {tok.get_vocab_size()}, test text {len(text_ids)} ids")


if __name__ == "__main__":
    main()
