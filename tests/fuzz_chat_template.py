#!/usr/bin/env python3
"""Differential fuzzing of skymoe's Jinja engine against Python's jinja2 (a development tool, not run
by CI; needs jinja2). It writes random templates built from the constructs chat templates use,
renders each with jinja2 in transformers' environment (tests/make_chat_template_fixtures.py) and
with `skymoe chat-template`, and prints every case where the two differ: in output, or in one
failing and the other not. Known, deliberate differences it avoids generating: "%" string
formatting (unsupported) and applying length or slicing to select/map results (jinja2 returns
generators there and fails; skymoe returns lists).

    python3 tests/fuzz_chat_template.py --bin build/skymoe --seed 1 --count 1000
"""
import argparse
import copy
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("fixtures", os.path.join(HERE, "make_chat_template_fixtures.py"))
fixtures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fixtures)

VARS = {
    "messages": [{"role": "user", "content": " Hi there "}, {"role": "assistant", "content": "a<think>b</think>c"}],
    "s": "Hello, World", "n": 7, "f": 2.5, "l": [3, 1, 2], "d": {"b": 1, "a": "x"}, "e": "", "z": None, "t": True,
}
ATOMS = ["s", "n", "f", "l", "d", "e", "z", "t", "u", "messages[0]", "messages[-1].content", "d.a", "d.b", "l[0]",
         "l[1:]", "l[::-1]", "'abc'", "\"q'\"", "0", "1", "-2", "3.0", "[]", "[1, 'a']", "{'k': 1}", "none", "true",
         "false", "(1, 2)", "messages|length", "x"]
BINOPS = ["+", "-", "*", "/", "//", "~", "==", "!=", "<", ">=", "and", "or", "in", "not in"]
FILTERS = ["length", "upper", "lower", "trim", "first", "last", "list", "string", "int", "float", "tojson",
           "reverse|list", "title", "capitalize", "abs", "default('D')", "join(',')", "sort", "unique|list",
           "items|list", "replace('l', 'L')", "select|list", "map('string')|list", "tojson(indent=1)", "round",
           "sum", "min", "max", "escape", "indent(2)", "dictsort"]
TESTS = ["defined", "none", "string", "number", "mapping", "sequence", "iterable", "odd", "even", "integer",
         "float", "boolean"]
METHODS = ["strip()", "split()", "split(',')", "upper()", "lower()", "startswith('H')", "endswith('d')",
           "replace('o', '0')", "title()", "items()|list", "keys()|list", "get('a')", "find('o')", "count('l')"]


def expr(depth=0):
    r = random.random()
    if depth > 3 or r < 0.3:
        return random.choice(ATOMS)
    if r < 0.5:
        return f"({expr(depth + 1)} {random.choice(BINOPS)} {expr(depth + 1)})"
    if r < 0.65:
        return f"{expr(depth + 1)}|{random.choice(FILTERS)}"
    if r < 0.75:
        return f"({expr(depth + 1)} is {random.choice(['', 'not '])}{random.choice(TESTS)})"
    if r < 0.85:
        return f"{random.choice(ATOMS)}.{random.choice(METHODS)}"
    if r < 0.92:
        return f"({expr(depth + 1)} if {expr(depth + 1)} else {expr(depth + 1)})"
    return f"(not {expr(depth + 1)})"


def stmt(depth=0):
    r = random.random()
    if depth > 2 or r < 0.4:
        return "{{ " + expr() + " }}" + random.choice(["", "\n", " ", "\n  "])
    if r < 0.55:
        return "{% if " + expr() + " %}\n" + stmt(depth + 1) + "{% else %}" + stmt(depth + 1) + "{% endif %}\n"
    if r < 0.7:
        return ("  {%- for x in " + random.choice(["l", "d", "s", "messages", "e", "u", "l|reverse|list"]) +
                " %}\n" + stmt(depth + 1) + "{{ loop.index }}{% endfor -%}\n")
    if r < 0.78:
        return "{% set " + random.choice(["s", "n", "q"]) + " = " + expr() + " %}" + stmt(depth + 1)
    if r < 0.84:
        return ("{% if " + expr() + " %}{% set q = " + expr() + " %}{% elif " + expr() + " %}" + stmt(depth + 1) +
                "{% set q = 1 %}{% else %}{% set q = 2 %}{% endif %}" + stmt(depth + 1))
    if r < 0.88:
        return ("{% macro mm(a, b=2) %}[{{ a }}{{ b }}{{ q }}{{ n }}]{% set n = 5 %}{{ n }}{% endmacro %}" +
                stmt(depth + 1) + "{{ mm(" + expr() + ") }}")
    if r < 0.92:
        return "{% set blk %}" + stmt(depth + 1) + "{% endset %}{{ blk|length }}"
    return "{# c #}\n" + stmt(depth + 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "build", "skymoe"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=500)
    args = ap.parse_args()
    random.seed(args.seed)
    env = fixtures.environment()
    bad = 0
    with tempfile.TemporaryDirectory() as model:
        with open(os.path.join(model, "conv.json"), "w") as f:
            json.dump(VARS, f)  # an object: "messages" plus the other variables
        for _ in range(args.count):
            template = "".join(stmt() for _ in range(random.randint(1, 3)))
            try:
                # a fresh copy: jinja2's indent filter extends a list it is given in place (`s += "\\n"`)
                want = ("ok", env.from_string(template).render(**copy.deepcopy(VARS), tools=None, documents=None))
            except Exception as e:
                want = ("error", f"{type(e).__name__}: {e}")
            with open(os.path.join(model, "chat_template.jinja"), "w") as f:
                f.write(template)
            p = subprocess.run([args.bin, "chat-template", "--model", model, "--messages", os.path.join(model, "conv.json")],
                               capture_output=True)
            got = ("ok", p.stdout.decode("utf-8", "replace")) if p.returncode == 0 else ("error", p.stderr.decode())
            if want[0] != got[0] or (want[0] == "ok" and want[1] != got[1]):
                bad += 1
                print(f"=== {template!r}\n  jinja2: {want[1][:400]!r}\n  skymoe: {got[1][:400]!r}")
    print(f"{bad} of {args.count} differ", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
