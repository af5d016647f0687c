#!/usr/bin/env python3
"""Writes tests/data/chat_templates/fixtures.json: what Python's jinja2 renders for each case, the
expectations tests/test_chat_template.cpp holds skymoe's template engine to. The CI does not need
jinja2; rerun this after changing a case:

    python3 tests/make_chat_template_fixtures.py        # needs jinja2 (python3-jinja2 or pip)

The environment is the one transformers' apply_chat_template renders in: jinja2's
ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols extension, its
own tojson filter (json.dumps without HTML escaping), raise_exception, strftime_now and the
{% generation %} tag; tools and documents are
None unless given. Cases are either whole chat templates (the *_style.jinja files here, written for
these tests in the style of real models' templates) over conversations, or small templates that pin
one piece of jinja2's semantics. A case whose render raises records the exception's type instead of
an output.
"""
import json
import os
import sys

from datetime import datetime

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "chat_templates")


def environment():
    # As transformers.utils.chat_template_utils._compile_jinja_template builds it.
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):  # no case uses it: its output changes every day
        return datetime.now().strftime(format)

    class Generation(Extension):
        # transformers' AssistantTracker, without the tracking: {% generation %} as a call block.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def chat_vars(messages, add_generation_prompt, bos="<s>", eos="</s>", **extra):
    v = {"messages": messages, "tools": None, "documents": None, "add_generation_prompt": add_generation_prompt}
    if bos is not None:
        v["bos_token"] = bos
    if eos is not None:
        v["eos_token"] = eos
    v.update(extra)
    return v


SYSTEM = {"role": "system", "content": "You answer in one short sentence."}
U1 = {"role": "user", "content": "What is a mixture of experts?"}
A1 = {"role": "assistant", "content": "  A model whose layers route each token to a few expert networks.  "}
U2 = {"role": "user", "content": "Why \"sparse\"? Use <b>tags</b> & émojis 🙂\nif you like."}
A_THINK = {"role": "assistant", "content": "<think>\nThe user wants a fact.\n</think>\n\nParis."}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                      "required": ["city"]}}},
    {"type": "function", "function": {"name": "now", "description": "The time, ISO 8601", "parameters": {}}},
]
CALL = {"role": "assistant", "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]}
TOOL_RESULT = {"role": "tool", "content": "{\"temp_c\": 21.5}"}
DS_CALL = {"role": "assistant", "content": None,
           "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]}
DOCS = [{"doc_id": 7, "text": "Experts are feed-forward blocks."}, {"doc_id": "b", "text": "Routing is top-k."}]

# (name, template file, variables)
CHAT_CASES = [
    ("mixtral/one_turn", "mixtral_style.jinja", chat_vars([U1], True)),
    ("mixtral/system_multi_turn", "mixtral_style.jinja", chat_vars([SYSTEM, U1, A1, U2], False)),
    ("mixtral/ends_with_reply", "mixtral_style.jinja", chat_vars([U1, A1], False)),
    ("mixtral/roles_not_alternating", "mixtral_style.jinja", chat_vars([U1, U2], True)),
    ("mixtral/unknown_role", "mixtral_style.jinja", chat_vars([U1, {"role": "critic", "content": "x"}], True)),
    ("chatml/one_turn", "chatml_style.jinja", chat_vars([U1], True, bos=None, eos="<|im_end|>")),
    ("chatml/one_turn_no_prompt", "chatml_style.jinja", chat_vars([U1], False, bos=None, eos="<|im_end|>")),
    ("chatml/system_multi_turn", "chatml_style.jinja", chat_vars([SYSTEM, U1, A1, U2], True, bos=None, eos="<|im_end|>")),
    ("chatml/tools", "chatml_style.jinja",
     chat_vars([U1, CALL, TOOL_RESULT, TOOL_RESULT, A1, U2], True, bos=None, eos="<|im_end|>", tools=TOOLS)),
    ("chatml/tools_with_system", "chatml_style.jinja",
     chat_vars([SYSTEM, U1], True, bos=None, eos="<|im_end|>", tools=TOOLS)),
    ("qwen_think/history_loses_reasoning", "qwen_think_style.jinja",
     chat_vars([SYSTEM, U1, A_THINK, U2, A_THINK], False, bos=None, eos="<|im_end|>")),
    ("qwen_think/prompt", "qwen_think_style.jinja", chat_vars([U1, A_THINK, U2], True, bos=None, eos="<|im_end|>")),
    ("qwen_think/no_thinking", "qwen_think_style.jinja",
     chat_vars([U1], True, bos=None, eos="<|im_end|>", enable_thinking=False)),
    ("qwen_think/reasoning_field", "qwen_think_style.jinja",
     chat_vars([U1, {"role": "assistant", "content": "Paris.", "reasoning_content": "\nCapital of France.\n"}],
               False, bos=None, eos="<|im_end|>")),
    ("deepseek/one_turn", "deepseek_style.jinja",
     chat_vars([U1], True, bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>")),
    ("deepseek/systems_and_history", "deepseek_style.jinja",
     chat_vars([SYSTEM, U1, A_THINK, {"role": "system", "content": "Be kind."}, U2], True,
               bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>")),
    ("deepseek/tool_calls", "deepseek_style.jinja",
     chat_vars([U1, DS_CALL, TOOL_RESULT, TOOL_RESULT], True, bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>")),
    ("deepseek/tool_then_reply", "deepseek_style.jinja",
     chat_vars([U1, DS_CALL, TOOL_RESULT, A1], False, bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>")),
    ("granite/one_turn", "granite_style.jinja", chat_vars([U1], True, bos=None, eos="<|end_of_text|>")),
    ("granite/system_multi_turn", "granite_style.jinja",
     chat_vars([SYSTEM, U1, A1, U2], True, bos=None, eos="<|end_of_text|>")),
    ("granite/tools_and_documents", "granite_style.jinja",
     chat_vars([U1], True, bos=None, eos="<|end_of_text|>", tools=TOOLS, documents=DOCS)),
    ("granite/documents_controls", "granite_style.jinja",
     chat_vars([U1, A1, U2], True, bos=None, eos="<|end_of_text|>", documents=DOCS,
               controls={"length": "short", "citations": True})),
    ("llama3/system_multi_turn", "llama3_style.jinja",
     chat_vars([SYSTEM, U1, A1, U2], True, bos="<|begin_of_text|>", eos="<|eot_id|>")),
    ("llama3/no_system", "llama3_style.jinja", chat_vars([U1], False, bos="<|begin_of_text|>", eos="<|eot_id|>")),
]

# (name, template, variables): one piece of jinja2's semantics each.
SEMANTIC_CASES = [
    # whitespace control, trim_blocks, lstrip_blocks, comments, the trailing newline
    ("ws/trim_lstrip", "a\n  {% if true %}\n  b\n  {% endif %}\nc\n", {}),
    ("ws/var_tags_not_stripped", "  {{ 'x' }}\n  {# note #}\ny\n", {}),
    ("ws/minus_both_sides", "a  \n {%- if true -%}  \n b {%- endif %} \nc", {}),
    ("ws/plus_keeps", "x\n    {%+ if true %}y{% endif +%}\nz", {}),
    ("ws/var_minus", "a\n\n{{- 'b' -}}\n\nc", {}),
    ("ws/tag_mid_line", "a {% if true %}b{% endif %} c\n", {}),
    ("ws/comment_minus", "a {#- c -#} b", {}),
    ("ws/two_trailing_newlines", "a\n\n", {}),
    ("ws/crlf", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\n", {}),
    ("ws/lstrip_at_start", "   {% if true %}x{% endif %}", {}),
    ("ws/tab_and_comment", "\t{# c #}\nx", {}),
    # scoping
    ("scope/set_in_loop_does_not_leak", "{% set x = 0 %}{% for i in [1,2] %}{{ x }}{% set x = i %}{{ x }}{% endfor %}{{ x }}", {}),
    ("scope/set_in_loop_fresh_each_iteration", "{% for i in [1,2] %}[{{ y }}]{% set y = i %}{% endfor %}{{ y }}", {}),
    ("scope/nested_loops", "{% for i in [1,2] %}{% set y = i %}{% for j in [3] %}{{ y }}{% set y = j %}{{ y }}{% endfor %}{{ y }}{% endfor %}", {}),
    ("scope/if_does_not_scope", "{% if true %}{% set z = 5 %}{% endif %}{{ z }}", {}),
    ("scope/namespace", "{% set ns = namespace(a=1, b='x') %}{% for i in [1,2,3] %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}{{ ns.b }}", {}),
    ("scope/namespace_new_attr", "{% set ns = namespace() %}{% set ns.k = [1] %}{{ ns.k }}", {}),
    ("scope/namespace_from_dict", "{% set ns = namespace({'a': 2}, b=3) %}{{ ns.a + ns.b }}", {}),
    ("scope/shadow_context", "{{ x }}{% set x = 2 %}{{ x }}", {"x": 1}),
    ("scope/loop_var_overwritten", "{% for t in ts %}{% if t.f is defined %}{% set t = t.f %}{% endif %}{{ t.n }}{% endfor %}", {"ts": [{"f": {"n": 1}}, {"n": 2}]}),
    ("scope/set_attr_on_dict_fails", "{% set d = {} %}{% set d.a = 1 %}", {}),
    ("scope/block_set", "{% set s %}a{{ 1 + 1 }}b{% endset %}[{{ s }}]", {}),
    ("scope/tuple_set", "{% set a, b = 1, 'two' %}{{ b }}{{ a }}", {}),
    # a frame's own variable hides the caller's before it is set (jinja2's idtracking)
    ("frame/loop_before_top_level_set", "{% for i in [1] %}[{{ s }}]{% endfor %}{% set s = 2 %}{{ s }}", {"s": "ctx"}),
    ("frame/read_first_resolves", "{{ s }}{% for i in [1] %}[{{ s }}]{% endfor %}{% set s = 2 %}{{ s }}", {"s": "ctx"}),
    ("frame/set_in_if_resolves", "{% for i in [1] %}[{{ s }}]{% endfor %}{% if c %}{% set s = 2 %}{% else %}{% set s = 3 %}{% endif %}{{ s }}", {"s": "ctx", "c": True}),
    ("frame/set_in_every_branch", "{% for i in [1] %}[{{ s }}]{% endfor %}{% if c %}{% set s = 2 %}{% elif d %}{% set s = 4 %}{% else %}{% set s = 3 %}{% endif %}{{ s }}", {"s": "ctx", "c": False, "d": True}),
    ("frame/nested_loop_frame", "{% for i in [1] %}{% for j in [1] %}[{{ s }}]{% endfor %}{% set s = 2 %}{{ s }}{% endfor %}|{% for i in [1] %}{% for j in [1] %}[{{ s }}]{% endfor %}{% set s = 2 %}{% endfor %}{{ s }}", {"s": "ctx"}),
    ("frame/macro_sees_top_level", "{% macro m() %}[{{ s }}]{% endmacro %}{{ m() }}{% set s = 2 %}{{ m() }}", {"s": "ctx"}),
    ("frame/self_reference", "{% set s = s ~ '!' %}{% for i in [1] %}[{{ s }}]{% endfor %}", {"s": "ctx"}),
    ("frame/block_set_does_not_leak", "{% set b %}{% set inner = 1 %}x{% endset %}{{ inner is defined }}{{ b }}", {}),
    # loops
    ("loop/vars", "{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}", {}),
    ("loop/filter", "{% for a in [1,2,3,4] if a is even %}{{ loop.index }}/{{ loop.length }}/{{ loop.last }}:{{ a }} {% endfor %}", {}),
    ("loop/else", "{% for a in [] %}x{% else %}empty{% endfor %}{% for a in [1] if a > 5 %}x{% else %}none kept{% endfor %}", {}),
    ("loop/dict_items_unpack", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("loop/items_filter", "{% for k, v in d | items %}{{ k }}{{ v }}{% endfor %}", {"d": {"z": 1, "y": [2]}}),
    ("loop/prev_next_cycle", "{% for x in [1,2,3] %}{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }} {{ loop.cycle('a', 'b') }}|{% endfor %}", {}),
    ("loop/break_continue", "{% for x in range(10) %}{% if x is odd %}{% continue %}{% endif %}{% if x > 6 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    ("loop/nested_loop_var", "{% for a in [1,2] %}{% for b in 'xy' %}{{ loop.index }}{% endfor %}{{ loop.index }} {% endfor %}", {}),
    ("loop/undefined_iterates_empty", "{% for x in nothing %}x{% else %}e{% endfor %}", {}),
    ("loop/over_none_fails", "{% for x in n %}{% endfor %}", {"n": None}),
    ("loop/range", "{{ range(3) | list }}{{ range(1, 10, 3) | list }}{{ range(5, 0, -2) | list }}", {}),
    # filters and precedence
    ("prec/neg_filter", "{{ -x|abs }} {{ -3 ** 2 }} {{ 2 ** 3 ** 2 }}", {"x": 3}),
    ("prec/concat_filter", "{{ 'a' ~ 'b'|upper }} {{ ('a' ~ 'b')|upper }}", {}),
    ("prec/concat_binds_tighter_than_plus", "{{ 1 ~ 2 + 3 ~ 4 }} {{ 'a' ~ 'b' * 2 }}", {}),
    ("prec/plus_of_concat_fails", "{{ 1 + 2 ~ 3 }}", {}),
    ("prec/not_is", "{{ not x is defined }} {{ not y is defined }} {{ x is not none }} {{ not x == 1 }}", {"x": 1}),
    ("prec/ternary", "{{ 'y' if x else 'n' }} {{ 'y' if not x else 'n' }}[{{ 'z' if false }}] {{ 1 if x else 2 if y else 3 }}", {"x": 0, "y": 1}),
    ("prec/and_or_values", "{{ '' or 'fallback' }} {{ 0 and 'no' }} {{ 'a' and 'b' }} {{ none or [] or 'last' }}", {}),
    ("prec/comparison_chain", "{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 2 == 2.0 }} {{ 'a' != 'b' }} {{ [1, 2] == [1, 2.0] }} {{ 1 <= 1 >= 0 }}", {}),
    ("filter/default", "{{ u|default('d') }} {{ ''|default('d') }} {{ ''|default('d', true) }} {{ none|default('d') }} {{ u|d('x') }}", {}),
    ("filter/trim_length_case", "[{{ '  x y \n'|trim }}] {{ 'héllo'|length }} {{ [1,2]|length }} {{ d|length }} {{ 'hELLo wORLD'|upper }} {{ 'ABC'|lower }} {{ \"it's a-b (c) [d]\"|title }} {{ 'hELLO'|capitalize }}", {"d": {"a": 1}}),
    ("filter/trim_chars", "{{ 'xxhixx'|trim('x') }}", {}),
    ("filter/join_first_last", "{{ [1, 'a', none]|join(', ') }} {{ ['a','b']|join }} {{ [3,4]|first }} {{ [3,4]|last }} {{ 'xyz'|first }} {{ ms|join('/', attribute='role') }}", {"ms": [{"role": "u"}, {"role": "a"}]}),
    ("filter/replace", "{{ 'aaa'|replace('a', 'b') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ 'ab'|replace('', '-') }}", {}),
    ("filter/string_int_float", "{{ 5|string ~ 'x' }} {{ '42'|int + 1 }} {{ '4.7'|int }} {{ 'z'|int }} {{ 'z'|int(7) }} {{ 3.9|int }} {{ '2.5'|float * 2 }} {{ 'n'|float }} {{ true|int }} {{ '0x1f'|int(0, 16) }}", {}),
    ("filter/list_reverse_sort_unique", "{{ 'abc'|list }} {{ [3,1,2]|reverse|list }} {{ 'abc'|reverse }} {{ ['b','A','c']|sort }} {{ [3,1,2]|sort(reverse=true) }} {{ ['a','A','b']|unique|list }} {{ ms|sort(attribute='n')|map(attribute='n')|list }}", {"ms": [{"n": 2}, {"n": 1}]}),
    ("filter/map_select", "{{ ms|map(attribute='role')|list }} {{ ['a','b']|map('upper')|list }} {{ ms|selectattr('role', 'equalto', 'user')|list|length }} {{ ms|rejectattr('role', 'equalto', 'user')|map(attribute='role')|first }} {{ [0,1,2,3]|select('odd')|list }} {{ [0,1,'',none,'x']|select|list }} {{ [1,2,3]|reject('in', [2])|list }} {{ ms|selectattr('tool')|list|length }}", {"ms": [{"role": "user"}, {"role": "assistant", "tool": True}, {"role": "user"}]}),
    ("filter/map_default", "{{ ms|map(attribute='x', default='-')|join }}", {"ms": [{"x": 1}, {}]}),
    ("filter/tojson", "{{ d|tojson }}|{{ d|tojson(indent=2) }}|{{ 'é\"<\\n'|tojson }}|{{ s|tojson(ensure_ascii=true) }}|{{ d|tojson(sort_keys=true) }}|{{ d|tojson(separators=(',', ':')) }}|{{ [1.0, 1e20, 0.1, none, true, []]|tojson }}|{{ {}|tojson(indent=2) }}", {"d": {"b": [1, 2, {"c": None}], "a": "x"}, "s": "é😀"}),
    ("filter/tojson_undefined_fails", "{{ u|tojson }}", {}),
    ("filter/escape_safe", "{{ '<a href=\"x\">&\\'</a>'|e }} {{ '<b>'|safe }}", {}),
    ("filter/indent", "[{{ 'a\nb\n\nc'|indent(2) }}] [{{ 'a\nb'|indent(2, true) }}] [{{ 'a\n\nb\n'|indent(width=1, blank=true) }}]", {}),
    ("filter/sum_min_max_round", "{{ [1,2,3]|sum }} {{ ms|sum(attribute='n') }} {{ [3,1,2]|min }} {{ ['b','C','a']|max }} {{ 2.5|round }} {{ 3.14159|round(2) }} {{ 2.1|round(0, 'ceil') }} {{ -1.5|abs }}", {"ms": [{"n": 2}, {"n": 1.5}]}),
    ("filter/attr_count", "{{ d|attr('k') }} {{ 'abc'|count }}", {"d": {"k": "v"}}),
    ("filter/items_of_undefined", "{{ u|items|list }}", {}),
    ("filter/unknown_fails", "{{ 'x'|nosuchfilter }}", {}),
    ("filter/unknown_in_an_if_is_fine_until_run", "{% if false %}{{ 'x'|nosuchfilter }}{% endif %}{{ 'x' if true else 'y'|nosuchfilter }}ok", {}),
    ("filter/unknown_in_loop_fails_at_load", "{% if false %}{% for i in [] %}{{ i|nosuchfilter }}{% endfor %}{% endif %}", {}),
    ("filter/select_map_of_false", "{{ (not x)|select|list }}{{ 0|map('string')|list }}", {"x": 1}),
    ("filter/round_int_stays_int", "{{ 3|round }} {{ true|round }} {{ 2|round(1, 'ceil') }}", {}),
    ("filter/int_of_undefined_fails", "{{ u|int }}", {}),
    ("filter/indent_of_non_string_fails", "{{ 5|indent }}", {}),
    # tests
    ("test/types", "{{ 'a' is string }}{{ 1 is number }}{{ true is number }}{{ true is integer }}{{ 1.5 is float }}{{ none is none }}{{ d is mapping }}{{ [] is sequence }}{{ 'a' is sequence }}{{ d is iterable }}{{ 3 is iterable }}{{ x is boolean }}{{ u is undefined }}", {"d": {}, "x": False}),
    ("test/compare", "{{ 4 is divisibleby 2 }}{{ 5 is divisibleby(2) }}{{ 3 is odd }}{{ 3 is even }}{{ 'a' is eq 'a' }}{{ 2 is gt 1 }}{{ 2 is le 1 }}{{ 'a' is in 'cat' }}{{ x is sameas none }}{{ x is true }}{{ x is false }}{{ 'abc' is lower }}{{ 'aBc' is upper }}", {"x": None}),
    ("test/numeric_parity", "{{ 3.0 is odd }}{{ 4.0 is even }}{{ 7.5 is divisibleby 2.5 }}{{ u is sequence }}", {}),
    ("test/unhashable_in_dict_fails", "{{ [1] in d }}", {"d": {}}),
    ("test/callable", "{{ range is callable }}{{ 'a'.strip is callable }}{{ 'a' is callable }}", {}),
    ("test/in", "{{ 'a' in 'cat' }} {{ 2 in [1,2] }} {{ 'k' in d }} {{ 'v' in d }} {{ 3 not in [1] }} {{ 'x' in u }}", {"d": {"k": "v"}}),
    # undefined
    ("undef/renders_empty", "[{{ u }}][{{ d.missing }}][{{ l[5] }}][{{ n.attr }}][{{ 'abc'.nope }}]", {"d": {}, "l": [1], "n": None}),
    ("undef/falsy_and_filters", "{{ u is defined }}{{ not u }}{{ u|length }}[{{ u|upper }}][{{ u|trim }}][{{ u ~ 'x' }}]{{ u == u }}{{ u == none }}", {}),
    ("undef/attr_of_undefined_fails", "{{ u.b }}", {}),
    ("undef/item_of_undefined_fails", "{{ u['b'] }}", {}),
    ("undef/missing_then_attr_fails", "{{ d.missing.x }}", {"d": {}}),
    ("undef/arithmetic_fails", "{{ u + 1 }}", {}),
    ("undef/call_fails", "{{ nothing() }}", {}),
    ("undef/compare_fails", "{{ u < 1 }}", {}),
    # expressions
    ("expr/literals", "{{ [1, 'a', none, true, {'k': 1.5, 'l': [2]}] }} {{ (1, 2) }} {{ (1,) }} {{ \"it's\" }} {{ ['it\\'s', 'a\"b', 'c\\\\d\\td'] }} {{ {'q': \"'\"} }} {{ 'a' 'b' }} {{ 1_000 }}", {}),
    ("expr/numbers", "{{ 1.0 }} {{ 1e16 }} {{ 1e15 }} {{ 0.1 }} {{ 1/3 }} {{ 7//2 }} {{ -7//2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2**10 }} {{ 2**-1 }} {{ 3 / 1 }} {{ 1e-5 }} {{ 0.0001 }} {{ 123456789.125 }} {{ -0.0 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ 10 - 2.5 }} {{ true + 1 }}", {}),
    ("expr/strings", "{{ 'ab' * 3 }} {{ 2 * [1] }} {{ [1] + [2] }} {{ 'a' + 'b' }} {{ 'x' ~ 1 ~ none ~ true }} {{ 'hello'[1:3] }} {{ 'hello'[::-1] }} {{ 'héllo'[1] }} {{ 'abc'[-1] }}", {}),
    ("expr/slicing", "{{ l[1:] }} {{ l[:-1] }} {{ l[::2] }} {{ l[::-1] }} {{ l[-2:] }} {{ l[5:] }} {{ l[3:1:-1] }} {{ l[-100:100] }}", {"l": [0, 1, 2, 3, 4]}),
    ("expr/attribute_and_item", "{{ m.role }} {{ m['content'] }} {{ l.0 }} {{ l[-1] }} {{ m.items()|list }} {{ d['items'] }} {{ d.items()|list }}", {"m": {"role": "user", "content": "hi"}, "l": [7, 8], "d": {"items": "key"}}),
    ("expr/str_methods", "{{ ' x '.strip() }}|{{ 'xAx'.strip('x') }}|{{ ' a '.lstrip() }}|{{ ' a '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'a b c'.rsplit(' ', 1) }}|{{ 'ab'.startswith('a') }}{{ 'ab'.startswith(('x', 'a')) }}{{ 'ab'.endswith('b') }}|{{ 'hello world'.title() }}|{{ \"they're\".title() }}|{{ 'Ab'.upper() }}{{ 'Ab'.lower() }}|{{ 'aXa'.replace('a', 'b') }}|{{ 'hello'.find('l') }}{{ 'hello'.count('l') }}|{{ '-'.join(['a', 'b']) }}|{{ 'l1\nl2\r\nl3'.splitlines() }}|{{ '12'.isdigit() }}", {}),
    ("expr/dict_methods", "{{ d.keys()|list }} {{ d.values()|list }} {{ d.get('a') }} {{ d.get('z', 3) }} {{ d.get('z') }} {{ d.items()|list }}", {"d": {"b": 1, "a": 2}}),
    ("expr/dict_literal_order", "{{ {'b': 1, 'a': 2, 'b': 3} }}", {}),
    ("expr/list_methods", "{{ [1, 2, 1].count(1) }} {{ ['a', 'b'].index('b') }}", {}),
    ("expr/macro", "{% macro tag(name, body='-') %}<{{ name }}>{{ body }}{{ g }}</{{ name }}>{% endmacro %}{% set g = '!' %}{{ tag('a') }}{{ tag('b', body='x') }}{{ tag('c', 'y')|upper }}", {}),
    ("expr/call_block", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}x{{ n }}{% endcall %}|{% macro each(items) %}{% for i in items %}{{ caller(i, loop.index) }}{% endfor %}{% endmacro %}{% call(item, k) each(['p', 'q']) %}{{ k }}={{ item }};{% endcall %}", {"n": 1}),
    ("expr/call_block_recursive", "{% macro tree(d) %}{% for k, v in d|items %}{% if v is mapping %}{% call tree(v) %}[{{ k }}]{% endcall %}{% else %}{{ caller() }}{{ k }}={{ v }};{% endif %}{% endfor %}{% endmacro %}{% call tree(t) %}root{% endcall %}", {"t": {"a": 1, "b": {"c": 2, "d": {"e": 3}}}}),
    ("expr/generation_tag", "{% for m in ms %}{% generation %}{% set inner = 1 %}<{{ m }}>{% endgeneration %}{% endfor %}{{ inner is defined }}", {"ms": ["a", "b"]}),
    ("expr/filter_block", "{% filter upper|replace('B', '-') %}ab{{ x }}{% set y = 1 %}{% endfilter %}{{ y is defined }}", {"x": "cb"}),
    ("expr/spread_args", "{% macro mul(a, b, c=1) %}{{ a * b * c }}{% endmacro %}{{ mul(*[2, 3]) }} {{ mul(2, **{'b': 5, 'c': 2}) }} {{ range(*[1, 4])|list }}", {}),
    ("expr/set_parenthesized_targets", "{% set (x, y) = [1, 2] %}{{ x }}{{ y }}{% for (a, b) in [[3, 4]] %}{{ a }}{{ b }}{% endfor %}", {}),
    ("filter/dictsort", "{{ d|dictsort }} {{ d|dictsort(reverse=true) }} {{ d|dictsort(by='value') }} {{ d|dictsort(case_sensitive=true) }}", {"d": {"b": 2, "a": 3, "C": 1}}),
    ("filter/sort_equal_keys", "{{ [none, none]|sort }} {{ [u, u]|sort|length }}", {}),
    ("expr/string_escapes", "{{ 'a\\tb\\u00e9\\x41\\n' }}|{{ \"q\\\"q\" }}", {}),
    ("expr/is_defined_on_context", "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ add_generation_prompt }}", {}),
    ("expr/type_error_fails", "{{ 'x' + 1 }}", {}),
    ("expr/compare_types_fails", "{{ 1 < 'a' }}", {}),
    ("expr/raise", "{% if true %}\n{{ raise_exception('custom message') }}\n{% endif %}", {}),
    ("expr/division_by_zero_fails", "{{ 1 / 0 }}", {}),
]


def render(env, template, variables):
    try:
        return {"expected": env.from_string(template).render(**variables)}
    except Exception as e:  # the C++ side checks that it fails too
        return {"error": type(e).__name__, "message": str(e)}


def main():
    env = environment()
    out = {"jinja2_version": jinja2.__version__, "cases": []}
    for name, file, variables in CHAT_CASES:
        with open(os.path.join(DATA, file), encoding="utf-8") as f:
            template = f.read()
        out["cases"].append({"name": name, "template_file": file, "vars": variables, **render(env, template, variables)})
    for name, template, variables in SEMANTIC_CASES:
        out["cases"].append({"name": name, "template": template, "vars": variables, **render(env, template, variables)})
    path = os.path.join(DATA, "fixtures.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    failing = [c["name"] for c in out["cases"] if "error" in c]
    print(f"wrote {path}: {len(out['cases'])} cases ({len(failing)} expected to fail: {', '.join(failing)})", file=sys.stderr)


if __name__ == "__main__":
    main()
