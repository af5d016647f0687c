#!/usr/bin/env python3
"""Makes the Hugging Face reference fixtures of tests/test_hf_families.cpp (run once; the output is
committed, so CI needs no PyPI):

  python3 -m venv /tmp/hf && /tmp/hf/bin/pip install torch transformers==4.57.1
  /tmp/hf/bin/python tests/make_hf_fixtures.py tests/data/hf [FAMILY...]   (default: every family)

For each family a tiny random checkpoint is made by transformers' own model class and saved with
save_pretrained (config.json + model.safetensors). Beside it, reference.safetensors holds:
  ids           the token ids of one sequence (as f32)
  logits        transformers' float32 logits of ids, [T, V]
  loss          mean next-token cross-entropy over ids (no auxiliary loss)
  greedy        8 tokens greedy generation adds after ids[:6] (as f32)
  grad.<name>   d loss / d parameter, for every parameter (zeros for DeepSeek-V3's
                e_score_correction_bias, a buffer: it is not trained by backprop)
"""
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
from transformers import (DeepseekV2Config, DeepseekV3Config, GraniteMoeConfig, GraniteMoeSharedConfig, OlmoeConfig,
                          Qwen2MoeConfig, Qwen3MoeConfig)

COMMON = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
              bos_token_id=1, eos_token_id=2, torch_dtype="float32")

FAMILIES = {
    # Layer 1 dense (mlp_only_layers), layer 0 MoE with a gated shared expert; top-2 of 8, no renorm.
    "qwen2_moe": Qwen2MoeConfig(**COMMON, intermediate_size=40, moe_intermediate_size=12,
                                shared_expert_intermediate_size=20, num_experts=8, num_experts_per_tok=2,
                                norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[1]),
    # head_dim 12 (q_dim 48 != hidden 32), per-head q/k norms; top-4 of 16, renormalized.
    "qwen3_moe": Qwen3MoeConfig(**COMMON, head_dim=12, intermediate_size=40, moe_intermediate_size=8,
                                num_experts=16, num_experts_per_tok=4, norm_topk_prob=True, decoder_sparse_step=1,
                                mlp_only_layers=[]),
    # q/k norms over the whole projection; top-3 of 8, no renorm.
    "olmoe": OlmoeConfig(**COMMON, intermediate_size=12, num_experts=8, num_experts_per_tok=3, norm_topk_prob=False),
    # Experts stacked (input_linear [8, 24, 32] holds each expert's gate and up rows); tied embeddings;
    # every multiplier away from 1 (attention 0.25 instead of 1/sqrt(8)); top-2 of 8.
    "granitemoe": GraniteMoeConfig(**{**COMMON, "tie_word_embeddings": True}, intermediate_size=12,
                                   num_local_experts=8, num_experts_per_tok=2, embedding_multiplier=0.5,
                                   attention_multiplier=0.25, residual_multiplier=1.5, logits_scaling=2.5),
    # The same with an ungated shared expert (shared_mlp.input_linear [40, 32]: gate rows, then up rows).
    "granitemoeshared": GraniteMoeSharedConfig(**{**COMMON, "tie_word_embeddings": True}, intermediate_size=12,
                                               shared_intermediate_size=20, num_local_experts=8, num_experts_per_tok=2,
                                               embedding_multiplier=0.5, attention_multiplier=0.25,
                                               residual_multiplier=1.5, logits_scaling=2.5),
}

# DeepSeek: multi-head latent attention (one key per head: kv heads = heads), a leading dense layer, shared
# experts. v_head_dim 6 differs from the q/k head (8 + 4) on purpose.
DS = dict(COMMON, num_key_value_heads=4, num_hidden_layers=3, intermediate_size=40, moe_intermediate_size=12,
          kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6, first_k_dense_replace=1)
FAMILIES.update({
    # DeepSeek-V2: q through a latent (q_lora_rank), group-limited routing (best 2 of 4 groups by max score,
    # then top-3), routed_scaling_factor, no renormalization, YaRN (factor 4 over 16 original positions).
    "deepseek_v2": DeepseekV2Config(**DS, q_lora_rank=24, n_routed_experts=8, n_shared_experts=2,
                                    num_experts_per_tok=3, topk_method="group_limited_greedy", n_group=4,
                                    topk_group=2, routed_scaling_factor=1.5, norm_topk_prob=False,
                                    rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                                  "beta_fast": 32.0, "beta_slow": 1.0}),
    # DeepSeek-V2-Lite's shape: q_proj directly (q_lora_rank None), greedy top-2 of 8, one shared expert.
    "deepseek_v2_lite": DeepseekV2Config(**DS, q_lora_rank=None, n_routed_experts=8, n_shared_experts=1,
                                         num_experts_per_tok=2, topk_method="greedy", routed_scaling_factor=1.0,
                                         norm_topk_prob=False),
    # DeepSeek-V3's router: sigmoid scores, a selection-only e_score_correction_bias, noaux_tc (best 2 of 4
    # groups by their top-2 biased sum), renormalized x 2.5; interleaved RoPE; YaRN whose mscale_all_dim
    # also scales the attention logits.
    "deepseek_v3": DeepseekV3Config(**DS, q_lora_rank=24, n_routed_experts=8, n_shared_experts=1,
                                    num_experts_per_tok=3, n_group=4, topk_group=2, routed_scaling_factor=2.5,
                                    norm_topk_prob=True, rope_interleave=True,
                                    rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                                  "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0,
                                                  "mscale_all_dim": 0.8}),
    # V3's other branches: rotate-half RoPE (rope_interleave false), one group, q_proj directly, no
    # renormalization, no rope_scaling.
    "deepseek_v3_half": DeepseekV3Config(**DS, q_lora_rank=None, n_routed_experts=8, n_shared_experts=1,
                                         num_experts_per_tok=2, n_group=1, topk_group=1, routed_scaling_factor=1.0,
                                         norm_topk_prob=False, rope_interleave=False),
})


def make(name, cfg, out):
    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32).eval()
    # Larger weights than the init: routing and attention then differ visibly between tokens.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_((1 + 0.2 * torch.randn_like(p)) if "norm" in pname else 0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (1.0 / p.shape[-1] ** 0.5))
        for bname, b in model.named_buffers():
            if "e_score_correction_bias" in bname:  # selection only: visibly changes which experts win
                b.copy_(0.1 * torch.randn_like(b))
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)

    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, cfg.vocab_size, (1, 12), generator=g)
    model.zero_grad()
    logits = model(ids, output_router_logits=False).logits[0]
    loss = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:])
    loss.backward()
    with torch.no_grad():
        gen = model.generate(ids[:, :6], max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    ref = {"ids": ids[0].float(), "logits": logits.detach().float(), "loss": loss.detach().reshape(1),
           "greedy": gen[0, 6:].float()}
    for pname, p in model.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)  # an expert no token chose
        ref["grad." + pname] = grad.detach().float().contiguous()
    for bname, b in model.named_buffers():
        if "e_score_correction_bias" in bname:
            ref["grad." + bname] = torch.zeros_like(b).float()
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(d, "reference.safetensors"))
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, loss {loss.item():.4f}, "
          f"greedy {gen[0, 6:].tolist()}")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "data", "hf")
    only = sys.argv[2:]
    for name in only:
        if name not in FAMILIES:
            sys.exit(f"unknown family {name!r} (known: {', '.join(FAMILIES)})")
    for name, cfg in FAMILIES.items():
        if not only or name in only:
            make(name, cfg, out)


if __name__ == "__main__":
    main()
