#!/usr/bin/env python3
"""Manual check (needs PyPI's torch + transformers): a model directory skymoe wrote (a `train`
checkpoint, `init`, `upcycle`) loads in Hugging Face transformers and generates the same greedy
tokens as `skymoe generate`, and the first step's logits agree (relative RMS printed).

  /tmp/hf/bin/python tests/check_hf_checkpoint.py build/skymoe RUN/step-00000002 [--prompt-ids 5,9,13] [--max-tokens 12]

Prints one JSON line; exits 1 when the tokens differ.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("skymoe")
    ap.add_argument("model")
    ap.add_argument("--prompt-ids", default="5,9,13,17,21,25")
    ap.add_argument("--max-tokens", type=int, default=12)
    a = ap.parse_args()
    prompt = [int(x) for x in a.prompt_ids.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        logits_file = os.path.join(tmp, "logits.f32")
        out = subprocess.run([a.skymoe, "generate", "--model", a.model, "--prompt-ids", a.prompt_ids, "--max-tokens",
                              str(a.max_tokens), "--json", "--logits-out", logits_file], check=True,
                             capture_output=True, text=True).stdout
        with open(logits_file, "rb") as f:
            sky_logits = torch.frombuffer(bytearray(f.read()), dtype=torch.float32)
    sky = json.loads(out)["generated_ids"]

    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        ids = torch.tensor([prompt])
        gen = model.generate(ids, max_new_tokens=a.max_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
        first = model(ids).logits[0, -1].float()  # the first generated token's logits
    hf = gen[0, len(prompt):].tolist()
    v = first.numel()
    rel = ((sky_logits[:v] - first).norm() / first.norm()).item()
    result = {"model": a.model, "architecture": type(model).__name__, "prompt_ids": prompt, "skymoe": sky, "hf": hf,
              "same": sky == hf, "first_logits_rel_rms": rel}
    print(json.dumps(result))
    sys.exit(0 if sky == hf else 1)


if __name__ == "__main__":
    main()
