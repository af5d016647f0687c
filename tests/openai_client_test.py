#!/usr/bin/env python3
"""The official `openai` Python client against `skymoe serve`: what a real client parses of our
completions, chat, streams, logprobs/echo and errors. CTest runs it (label `client`); it exits 77,
CTest's skip code, when the package is missing (scripts/setup.sh installs the pinned version from
tests/openai_client_requirements.txt into BUILD/pyenv).

usage: openai_client_test.py SKYMOE_BIN [PYTHON_WITH_OPENAI]

The model is made here: a SentencePiece tokenizer trained by `skymoe tokenize` on a small generated
corpus and a random tiny MoE from `skymoe init` whose vocabulary matches it.
"""
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

SKIP = 77

try:
    import openai
except ImportError:
    # The package lives in the build's venv: run again with its interpreter, once (a venv's
    # python is a link to the base one, so the environment marks the second run).
    if len(sys.argv) > 2 and os.access(sys.argv[2], os.X_OK) and not os.environ.get("SKYMOE_CLIENT_REEXEC"):
        os.environ["SKYMOE_CLIENT_REEXEC"] = "1"
        os.execv(sys.argv[2], [sys.argv[2]] + sys.argv)
    print("SKIP: the openai package is not installed (bash scripts/setup.sh installs it into BUILD/pyenv)")
    sys.exit(SKIP)

SKYMOE = sys.argv[1] if len(sys.argv) > 1 else "build/skymoe"
WORDS = ("the model expert router token layer gating sparse mixture training quick brown fox jumps over "
         "lazy dog loss batch of and to in is with MoE says hello world 42 data").split()
VOCAB = 320


def run(*args):
    subprocess.run([SKYMOE, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_model(root):
    """A model directory with tokenizer.model: random weights, but a real tokenizer and config."""
    rng = random.Random(11)
    with open(os.path.join(root, "corpus.txt"), "w") as f:
        for _ in range(1500):
            f.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) + ".\n")
    tok = os.path.join(root, "tokenizer.model")
    run("tokenize", "--input", os.path.join(root, "corpus.txt"), "--out", os.path.join(root, "tokens.bin"),
        "--train-tokenizer", tok, "--vocab-size", str(VOCAB), "--separator", "line")
    run("init", "--preset", "tiny", "--out", os.path.join(root, "preset"))
    with open(os.path.join(root, "preset", "config.json")) as f:
        cfg = json.load(f)
    cfg["vocab_size"] = VOCAB
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(cfg, f)
    model = os.path.join(root, "tiny-client")
    run("init", "--config", os.path.join(root, "config.json"), "--out", model, "--seed", "3")
    shutil.copy(tok, os.path.join(model, "tokenizer.model"))
    return model


class Server:
    def __init__(self, model):
        self.proc = subprocess.Popen([SKYMOE, "serve", "--model", model, "--port", "0", "--threads", "2", "--quiet"],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"listening on (http://\S+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"skymoe serve did not start: {line!r}")
        self.url = m.group(1)

    def stop(self):
        self.proc.terminate()
        rc = self.proc.wait(timeout=20)
        assert rc == 0, f"skymoe serve exited with {rc} on SIGTERM"


def setUpModule():
    global ROOT, SERVER, CLIENT, MODEL
    ROOT = tempfile.mkdtemp(prefix="skymoe-openai-client-")
    model = make_model(ROOT)
    MODEL = os.path.basename(model)
    SERVER = Server(model)
    CLIENT = openai.OpenAI(base_url=SERVER.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def tearDownModule():
    SERVER.stop()
    shutil.rmtree(ROOT, ignore_errors=True)


PROMPT = "the quick brown fox"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}]


class Completions(unittest.TestCase):
    def test_plain_and_deterministic(self):
        r = CLIENT.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
        self.assertEqual(r.object, "text_completion")
        self.assertEqual(r.model, MODEL)
        c = r.choices[0]
        self.assertIsInstance(c.text, str)
        self.assertIn(c.finish_reason, ("length", "stop"))
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        self.assertIsNone(c.logprobs)
        again = CLIENT.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
        self.assertEqual(again.choices[0].text, c.text)

    def test_stream_matches(self):
        plain = CLIENT.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0)
        chunks = list(CLIENT.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
                                                stream_options={"include_usage": True}))
        self.assertEqual("".join(c.choices[0].text for c in chunks if c.choices), plain.choices[0].text)
        self.assertEqual(chunks[-1].usage.completion_tokens, plain.usage.completion_tokens)

    def test_logprobs_and_echo(self):
        r = CLIENT.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3, echo=True)
        c = r.choices[0]
        self.assertTrue(c.text.startswith(PROMPT))
        lp = c.logprobs
        n = r.usage.prompt_tokens + r.usage.completion_tokens
        self.assertEqual(len(lp.tokens), n)
        self.assertEqual(len(lp.token_logprobs), n)
        self.assertEqual(len(lp.text_offset), n)
        self.assertIsNone(lp.token_logprobs[0])
        self.assertIsNone(lp.top_logprobs[0])
        for i in range(1, n):
            self.assertLessEqual(lp.token_logprobs[i], 0.0)
            self.assertIn(lp.tokens[i], lp.top_logprobs[i])
            self.assertLessEqual(len(lp.top_logprobs[i]), 4)
        # Greedy: each generated token is the likeliest at its position.
        for i in range(r.usage.prompt_tokens, n):
            self.assertEqual(lp.token_logprobs[i], max(lp.top_logprobs[i].values()))
        # The probabilities of a position's alternatives cannot sum past 1.
        self.assertLessEqual(sum(math.exp(v) for v in lp.top_logprobs[1].values()), 1.0 + 1e-6)

    def test_lm_eval_loglikelihood_shape(self):
        # What lm-evaluation-harness's local-completions sends: token ids (a batch of one), echo,
        # logprobs 1, max_tokens 1; then max_tokens 0, which scores the prompt alone.
        prompt = [[1, 5, 6, 7, 8]]
        r = CLIENT.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0, logprobs=1, echo=True,
                                      seed=1234)
        self.assertEqual(len(r.choices[0].logprobs.token_logprobs), len(prompt[0]) + 1)
        z = CLIENT.completions.create(model=MODEL, prompt=prompt, max_tokens=0, temperature=0, logprobs=1, echo=True)
        self.assertEqual(z.choices[0].logprobs.token_logprobs, r.choices[0].logprobs.token_logprobs[:-1])
        self.assertEqual(z.usage.completion_tokens, 0)

    def test_streamed_logprobs(self):
        plain = CLIENT.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2)
        tokens, lps = [], []
        for c in CLIENT.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2,
                                           stream=True):
            if c.choices and c.choices[0].logprobs:
                tokens += c.choices[0].logprobs.tokens
                lps += c.choices[0].logprobs.token_logprobs
        self.assertEqual(tokens, plain.choices[0].logprobs.tokens)
        self.assertEqual(lps, plain.choices[0].logprobs.token_logprobs)


class Chat(unittest.TestCase):
    def test_plain_and_stream(self):
        r = CLIENT.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=10, temperature=0)
        self.assertEqual(r.object, "chat.completion")
        msg = r.choices[0].message
        self.assertEqual(msg.role, "assistant")
        self.assertIsInstance(msg.content, str)
        parts = list(CLIENT.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=10, temperature=0,
                                                    stream=True))
        self.assertEqual(parts[0].choices[0].delta.role, "assistant")
        self.assertEqual("".join(p.choices[0].delta.content or "" for p in parts), msg.content)
        self.assertEqual(parts[-1].choices[0].finish_reason, r.choices[0].finish_reason)

    def test_logprobs(self):
        r = CLIENT.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, temperature=0, logprobs=True,
                                           top_logprobs=2)
        content = r.choices[0].logprobs.content
        self.assertGreater(len(content), 0)
        for e in content:
            self.assertEqual(len(e.top_logprobs), 2)
            self.assertEqual(e.top_logprobs[0].logprob, e.logprob)  # greedy
            self.assertGreaterEqual(e.top_logprobs[0].logprob, e.top_logprobs[1].logprob)
            self.assertIsInstance(e.bytes, list)
        streamed = []
        for p in CLIENT.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, temperature=0, logprobs=True,
                                                top_logprobs=2, stream=True):
            if p.choices and p.choices[0].logprobs:
                streamed += p.choices[0].logprobs.content
        self.assertEqual([e.logprob for e in streamed], [e.logprob for e in content])


class Errors(unittest.TestCase):
    def assert_error(self, exc, status, param, code, call):
        with self.assertRaises(exc) as cm:
            call()
        e = cm.exception
        self.assertEqual(e.status_code, status)
        self.assertEqual(e.param, param)
        self.assertEqual(e.code, code)

    def test_bad_parameters_are_400(self):
        self.assert_error(openai.BadRequestError, 400, "logprobs", "invalid_value",
                          lambda: CLIENT.completions.create(model=MODEL, prompt=PROMPT, logprobs=100))
        self.assert_error(openai.BadRequestError, 400, "temperature", "invalid_value",
                          lambda: CLIENT.completions.create(model=MODEL, prompt=PROMPT, temperature=7))
        self.assert_error(openai.BadRequestError, 400, "top_logprobs", "invalid_value",
                          lambda: CLIENT.chat.completions.create(model=MODEL, messages=CHAT, top_logprobs=2))
        self.assert_error(openai.BadRequestError, 400, "prompt", "context_length_exceeded",
                          lambda: CLIENT.completions.create(model=MODEL, prompt="the fox " * 20000, max_tokens=1))

    def test_unknown_model_is_404(self):
        self.assert_error(openai.NotFoundError, 404, "model", "model_not_found",
                          lambda: CLIENT.completions.create(model="gpt-4", prompt=PROMPT))
        self.assert_error(openai.NotFoundError, 404, "model", "model_not_found",
                          lambda: CLIENT.models.retrieve("gpt-4"))
        self.assertEqual([m.id for m in CLIENT.models.list()], [MODEL])


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
