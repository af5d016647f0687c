#!/usr/bin/env python3
"""Makes the GGUF fixtures under tests/data/gguf with the PyPI `gguf` package (llama.cpp's own Python
writer and reference (de)quantizers), so skymoe's reader is checked against files it did not write.

    python3 -m venv /tmp/ggufvenv && /tmp/ggufvenv/bin/pip install gguf numpy
    /tmp/ggufvenv/bin/python tests/make_gguf_fixtures.py      # gguf 0.19.0, numpy 2.x

Writes (all small, committed):
  qwen2_moe.gguf, qwen3_moe.gguf, olmoe.gguf   tests/data/hf/<family> converted as llama.cpp's
                                               convert_hf_to_gguf.py lays them out (f32)
  llama_moe/                                   a tiny random Mixtral-style model in HF safetensors
                                               (config.json, model.safetensors), and as GGUF:
  llama_moe-f32.gguf                           merged experts (ffn_gate_exps ...), q/k permuted
  llama_moe-q8_0.gguf                          per-expert tensors (blk.N.ffn_gate.E.weight), Q8_0
  llama_moe-q4_0.gguf                          merged experts, Q4_0 (norms and router f32)
  llama_dense-bf16.gguf                        a dense llama in BF16 with a tied head
  tok-{gpt2,qwen2,llama3}.gguf                 vocabulary only: tests/data/hf_tokenizers/<name>'s
                                               tokenizer.json as tokenizer.ggml.* (gpt2 model)
  blocks.gguf                                  random blocks of every block type skymoe decodes, with
                                               extreme scales, beside gguf.quants.dequantize of each
"""
import json
import os
import struct
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

ROOT = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(ROOT, "data", "gguf")


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype=np.float32).reshape(info["shape"]).copy()
    return out


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        b = np.ascontiguousarray(t, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def permute(w, n_head):
    """llama.cpp's q/k row order for its llama architecture (convert_hf_to_gguf's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add(w, name, t, qtype=Q.F32):
    """Adds t (numpy, PyTorch layout) as qtype; 1-D tensors and rows that do not fit the block stay f32."""
    t = np.ascontiguousarray(t, dtype=np.float32)
    if qtype == Q.F32 or t.ndim == 1 or t.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] != 0:
        w.add_tensor(name, t)
    else:
        w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---- the HF family fixtures --------------------------------------------------------------------

ARCH = {"qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "olmoe": "olmoe"}


def convert_family(fam):
    d = os.path.join(ROOT, "data", "hf", fam)
    cfg = json.load(open(os.path.join(d, "config.json")))
    st = read_safetensors(os.path.join(d, "model.safetensors"))
    arch = ARCH[fam]
    w = gguf.GGUFWriter(os.path.join(OUT, fam + ".gguf"), arch)
    L, H = cfg["num_hidden_layers"], cfg["hidden_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // heads
    w.add_name("skymoe test " + fam)
    w.add_block_count(L)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(H)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    if hd != H // heads:
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_expert_count(cfg["num_experts"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    if "moe_intermediate_size" in cfg:  # OLMoE's experts are intermediate_size wide: no key, as llama.cpp writes it
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if fam == "qwen2_moe":
        w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    w.add_uint32("tokenizer.ggml.bos_token_id", cfg.get("bos_token_id") or 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", cfg.get("eos_token_id") or 2)
    add(w, "token_embd.weight", st["model.embed_tokens.weight"])
    for l in range(L):
        p = f"model.layers.{l}."
        b = f"blk.{l}."
        add(w, b + "attn_norm.weight", st[p + "input_layernorm.weight"])
        for hf, gg in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")):
            add(w, b + gg + ".weight", st[p + "self_attn." + hf + ".weight"])
            if p + "self_attn." + hf + ".bias" in st:
                add(w, b + gg + ".bias", st[p + "self_attn." + hf + ".bias"])
        for hf, gg in (("q_norm", "attn_q_norm"), ("k_norm", "attn_k_norm")):
            if p + "self_attn." + hf + ".weight" in st:
                add(w, b + gg + ".weight", st[p + "self_attn." + hf + ".weight"])
        add(w, b + "ffn_norm.weight", st[p + "post_attention_layernorm.weight"])
        if p + "mlp.gate.weight" not in st:  # a dense layer (Qwen2-MoE's mlp_only_layers)
            for hf, gg in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
                add(w, b + gg + ".weight", st[p + "mlp." + hf + ".weight"])
            continue
        add(w, b + "ffn_gate_inp.weight", st[p + "mlp.gate.weight"])
        E = cfg["num_experts"]
        for hf, gg in (("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")):
            add(w, b + gg + ".weight", np.stack([st[p + f"mlp.experts.{e}.{hf}.weight"] for e in range(E)]))
        if fam == "qwen2_moe":
            for hf, gg in (("gate_proj", "ffn_gate_shexp"), ("up_proj", "ffn_up_shexp"), ("down_proj", "ffn_down_shexp")):
                add(w, b + gg + ".weight", st[p + "mlp.shared_expert." + hf + ".weight"])
            add(w, b + "ffn_gate_inp_shexp.weight", st[p + "mlp.shared_expert_gate.weight"].reshape(-1))
    add(w, "output_norm.weight", st["model.norm.weight"])
    add(w, "output.weight", st["lm_head.weight"])
    finish(w)


# ---- the llama fixtures ------------------------------------------------------------------------

def llama_metadata(w, cfg, experts):
    w.add_name("skymoe test llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if experts:
        w.add_expert_count(cfg["num_local_experts"])
        w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)


def write_llama_gguf(path, cfg, st, qtype, merged, experts=True):
    w = gguf.GGUFWriter(path, "llama")
    llama_metadata(w, cfg, experts)
    w.add_file_type({Q.F32: 0, Q.F16: 1, Q.Q4_0: 2, Q.Q8_0: 7, Q.BF16: 32}[qtype])
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    add(w, "token_embd.weight", st["model.embed_tokens.weight"], qtype)
    for l in range(cfg["num_hidden_layers"]):
        p, b = f"model.layers.{l}.", f"blk.{l}."
        add(w, b + "attn_norm.weight", st[p + "input_layernorm.weight"])
        add(w, b + "attn_q.weight", permute(st[p + "self_attn.q_proj.weight"], heads), qtype)
        add(w, b + "attn_k.weight", permute(st[p + "self_attn.k_proj.weight"], kv), qtype)
        add(w, b + "attn_v.weight", st[p + "self_attn.v_proj.weight"], qtype)
        add(w, b + "attn_output.weight", st[p + "self_attn.o_proj.weight"], qtype)
        add(w, b + "ffn_norm.weight", st[p + "post_attention_layernorm.weight"])
        if experts:
            E = cfg["num_local_experts"]
            add(w, b + "ffn_gate_inp.weight", st[p + "block_sparse_moe.gate.weight"])
            for hf, gg in (("w1", "ffn_gate"), ("w3", "ffn_up"), ("w2", "ffn_down")):
                ws = [st[p + f"block_sparse_moe.experts.{e}.{hf}.weight"] for e in range(E)]
                if merged:
                    add(w, b + gg + "_exps.weight", np.stack(ws), qtype)
                else:
                    for e in range(E):
                        add(w, b + f"{gg}.{e}.weight", ws[e], qtype)
        else:
            for hf, gg in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
                add(w, b + gg + ".weight", st[p + "mlp." + hf + ".weight"], qtype)
    add(w, "output_norm.weight", st["model.norm.weight"])
    if "lm_head.weight" in st:
        add(w, "output.weight", st["lm_head.weight"], qtype)
    finish(w)


def llama_fixtures():
    rng = np.random.default_rng(14)
    cfg = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 64, "hidden_size": 64,
           "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "num_local_experts": 4, "num_experts_per_tok": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}
    V, H, I, E = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"], cfg["num_local_experts"]
    hd = H // cfg["num_attention_heads"]
    kvd = cfg["num_key_value_heads"] * hd
    r = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)
    st = {"model.embed_tokens.weight": r(V, H)}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        st[p + "input_layernorm.weight"] = (1 + r(H)).astype(np.float32)
        st[p + "self_attn.q_proj.weight"] = r(H, H)
        st[p + "self_attn.k_proj.weight"] = r(kvd, H)
        st[p + "self_attn.v_proj.weight"] = r(kvd, H)
        st[p + "self_attn.o_proj.weight"] = r(H, H)
        st[p + "post_attention_layernorm.weight"] = (1 + r(H)).astype(np.float32)
        st[p + "block_sparse_moe.gate.weight"] = r(E, H) * 10
        for e in range(E):
            st[p + f"block_sparse_moe.experts.{e}.w1.weight"] = r(I, H)
            st[p + f"block_sparse_moe.experts.{e}.w3.weight"] = r(I, H)
            st[p + f"block_sparse_moe.experts.{e}.w2.weight"] = r(H, I)
    st["model.norm.weight"] = (1 + r(H)).astype(np.float32)
    st["lm_head.weight"] = r(V, H)
    d = os.path.join(OUT, "llama_moe")
    os.makedirs(d, exist_ok=True)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    write_safetensors(os.path.join(d, "model.safetensors"), st)
    write_llama_gguf(os.path.join(OUT, "llama_moe-f32.gguf"), cfg, st, Q.F32, merged=True)
    write_llama_gguf(os.path.join(OUT, "llama_moe-q8_0.gguf"), cfg, st, Q.Q8_0, merged=False)
    write_llama_gguf(os.path.join(OUT, "llama_moe-q4_0.gguf"), cfg, st, Q.Q4_0, merged=True)

    # A dense llama with a tied head, in bf16.
    dcfg = dict(cfg, model_type="llama", architectures=["LlamaForCausalLM"], intermediate_size=96,
                num_hidden_layers=1, tie_word_embeddings=True)
    for k in ("num_local_experts", "num_experts_per_tok"):
        dcfg.pop(k)
    dst = {"model.embed_tokens.weight": st["model.embed_tokens.weight"], "model.norm.weight": st["model.norm.weight"]}
    p = "model.layers.0."
    for k in ("input_layernorm", "post_attention_layernorm"):
        dst[p + k + ".weight"] = st[p + k + ".weight"]
    for k in ("q_proj", "k_proj", "v_proj", "o_proj"):
        dst[p + "self_attn." + k + ".weight"] = st[p + "self_attn." + k + ".weight"]
    dst[p + "mlp.gate_proj.weight"] = r(96, H)
    dst[p + "mlp.up_proj.weight"] = r(96, H)
    dst[p + "mlp.down_proj.weight"] = r(H, 96)
    dd = os.path.join(OUT, "llama_dense")
    os.makedirs(dd, exist_ok=True)
    json.dump(dcfg, open(os.path.join(dd, "config.json"), "w"), indent=2)
    # Stored as the bf16 values the GGUF holds, so both load the same weights.
    bf = {k: gguf.quants.dequantize(gguf.quants.quantize(v, Q.BF16), Q.BF16).astype(np.float32) if v.ndim == 2 else v
          for k, v in dst.items()}
    write_safetensors(os.path.join(dd, "model.safetensors"), bf)
    write_llama_gguf(os.path.join(OUT, "llama_dense-bf16.gguf"), dcfg, dst, Q.BF16, merged=True, experts=False)


# ---- tokenizers --------------------------------------------------------------------------------

def tokenizer_fixture(name, pre):
    j = json.load(open(os.path.join(ROOT, "data", "hf_tokenizers", name, "tokenizer.json")))
    vocab = j["model"]["vocab"]
    n = max(max(vocab.values()), max((a["id"] for a in j.get("added_tokens", [])), default=0)) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [gguf.TokenType.UNUSED] * n
    for piece, i in vocab.items():
        tokens[i], types[i] = piece, gguf.TokenType.NORMAL
    for a in j.get("added_tokens", []):
        tokens[a["id"]] = a["content"]
        types[a["id"]] = gguf.TokenType.CONTROL if a["special"] else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    w = gguf.GGUFWriter(os.path.join(OUT, f"tok-{name}.gguf"), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    finish(w)


# ---- blocks ------------------------------------------------------------------------------------

# Where each type keeps its f16 scales (byte offsets in the block).
SCALES = {Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2],
          Q.Q6_K: [208], Q.Q2_K: [80, 82], Q.Q3_K: [108]}
EXTREME = [0.0, -0.0, 1.0, -1.0, 65504.0, -65504.0, 2.0 ** -24, -(2.0 ** -24), 2.0 ** -14, 6.1e-5, 1e-3, 0.5, 3.0e4]


def blocks_fixture():
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(os.path.join(OUT, "blocks.gguf"), "llama")
    for qt, offs in SCALES.items():
        bv, bb = gguf.GGML_QUANT_SIZES[qt]
        nb = 32
        raw = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
        for k in range(nb):
            for o in offs:
                v = EXTREME[(k + o) % len(EXTREME)] if k < 2 * len(EXTREME) else rng.standard_normal() * 0.05
                raw[k, o:o + 2] = np.frombuffer(np.float16(v).tobytes(), dtype=np.uint8)
        rows = 4
        data = raw.reshape(rows, -1)
        w.add_tensor(qt.name.lower(), data, raw_dtype=qt)
        w.add_tensor(qt.name.lower() + ".deq", gguf.quants.dequantize(data, qt).astype(np.float32))
    finish(w)


# ---- fuzz seeds --------------------------------------------------------------------------------

def fuzz_seeds():
    d = os.path.join(ROOT, "..", "fuzz", "corpus", "gguf")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(3)
    r = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)
    cfg = {"vocab_size": 8, "hidden_size": 32, "intermediate_size": 32, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1, "num_local_experts": 2, "num_experts_per_tok": 1,
           "max_position_embeddings": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
    st = {"model.embed_tokens.weight": r(8, 32), "model.norm.weight": r(32), "lm_head.weight": r(8, 32)}
    p = "model.layers.0."
    for k, s in (("input_layernorm", (32,)), ("post_attention_layernorm", (32,)), ("self_attn.q_proj", (32, 32)),
                 ("self_attn.k_proj", (16, 32)), ("self_attn.v_proj", (16, 32)), ("self_attn.o_proj", (32, 32)),
                 ("block_sparse_moe.gate", (2, 32))):
        st[p + k + ".weight"] = r(*s)
    for e in range(2):
        for k in ("w1", "w2", "w3"):
            st[p + f"block_sparse_moe.experts.{e}.{k}.weight"] = r(32, 32)
    write_llama_gguf(os.path.join(d, "moe-q8_0"), cfg, st, Q.Q8_0, merged=True)
    write_llama_gguf(os.path.join(d, "moe-experts-q4_0"), cfg, st, Q.Q4_0, merged=False)
    for name, model, toks, types, extra in (
            ("vocab-gpt2", "gpt2", ["a", "b", "ab", "Ġ", "Ġa", "<|end|>"], [1, 1, 1, 1, 1, 3], {"merges": ["a b", "Ġ a"]}),
            ("vocab-llama", "llama", ["<unk>", "<s>", "</s>", "▁", "a", "▁a", "<0x41>"], [2, 3, 3, 1, 1, 1, 6], {})):
        w = gguf.GGUFWriter(os.path.join(d, name), "llama")
        w.add_tokenizer_model(model)
        if model == "gpt2":
            w.add_tokenizer_pre("qwen2")
            w.add_token_merges(extra["merges"])
        else:
            w.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0, -0.5, 0.0])
            w.add_bos_token_id(1)
            w.add_eos_token_id(2)
        w.add_token_list(toks)
        w.add_token_types(types)
        finish(w)


def main():
    os.makedirs(OUT, exist_ok=True)
    for fam in ARCH:
        convert_family(fam)
    llama_fixtures()
    tokenizer_fixture("gpt2", "gpt2")
    tokenizer_fixture("qwen2", "qwen2")
    tokenizer_fixture("llama3", "llama-bpe")
    blocks_fixture()
    fuzz_seeds()
    print("gguf", gguf.__version__ if hasattr(gguf, "__version__") else "?", "numpy", np.__version__, "->", OUT)


if __name__ == "__main__":
    sys.exit(main())
