// Chat templates: the Jinja engine (io/jinja) against Python's jinja2 (fixtures written by
// tests/make_chat_template_fixtures.py), its semantics and limits, errors naming the line, loading a
// model directory's template (io/chat_template), the derived stop strings and special-token
// encoding, and the `chat-template` / `generate --chat` commands.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "infer/api.h"
#include "io/chat_template.h"
#include "io/jinja/template.h"
#include "io/json_input.h"
#include "io/tokenizer.h"
#include "model/model.h"
#include "ref.h"

extern char** environ;

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;
using sky::ChatTemplate;
using sky::jinja::Template;
using sky::jinja::TemplateError;

namespace {

const std::string kData = std::string(SKYMOE_TEST_DATA) + "/chat_templates";

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f) << path;
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void spit(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

sky::jinja::Items vars_of(const ojson& j) {
  sky::jinja::Items v;
  for (auto it = j.begin(); it != j.end(); ++it) v.emplace_back(it.key(), sky::jinja::from_json(it.value()));
  return v;
}

std::string render(const std::string& tpl, const ojson& vars = ojson::object()) {
  return Template(tpl, "t").render(vars_of(vars));
}

// The message of the TemplateError `f` throws ("" and a failure when it throws none).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const TemplateError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no TemplateError";
  return "";
}

const ojson& fixtures() {
  static const ojson f = sky::read_ordered_json_file(kData + "/fixtures.json");
  return f;
}

const ojson& fixture(const std::string& name) {
  for (const auto& c : fixtures()["cases"])
    if (c["name"] == name) return c;
  throw std::runtime_error("no fixture " + name);
}

// ---- against Python's jinja2 ----------------------------------------------------------------------

TEST(JinjaFixtures, RenderLikePythonJinja2) {
  const auto& cases = fixtures()["cases"];
  ASSERT_GT(cases.size(), 100u);
  int rendered = 0, failed = 0;
  for (const auto& c : cases) {
    const std::string name = c["name"];
    const std::string source = c.contains("template_file") ? slurp(kData + "/" + c["template_file"].get<std::string>())
                                                           : c["template"].get<std::string>();
    SCOPED_TRACE(name);
    if (c.contains("expected")) {
      std::string got;
      try {
        got = Template(source, name).render(vars_of(c["vars"]));
      } catch (const std::exception& e) {
        ADD_FAILURE() << name << " threw: " << e.what();
        continue;
      }
      EXPECT_EQ(got, c["expected"].get<std::string>()) << name;
      rendered++;
    } else {
      // jinja2 raised (its type in "error"): so must we, as a TemplateError naming a line.
      try {
        Template t(source, name);
        std::string out = t.render(vars_of(c["vars"]));
        ADD_FAILURE() << name << ": expected " << c["error"].get<std::string>() << ", rendered: " << out;
      } catch (const TemplateError& e) {
        EXPECT_NE(std::string(e.what()).find(name + ", line "), std::string::npos) << e.what();
        failed++;
      }
    }
  }
  EXPECT_GT(rendered, 80);
  EXPECT_GT(failed, 10);
}

// The messages jinja2 gave for raise_exception are ours too, verbatim.
TEST(JinjaFixtures, RaiseExceptionKeepsTheTemplatesMessage) {
  for (const char* name : {"mixtral/roles_not_alternating", "mixtral/unknown_role", "expr/raise"}) {
    const auto& c = fixture(name);
    const std::string source = c.contains("template_file") ? slurp(kData + "/" + c["template_file"].get<std::string>())
                                                           : c["template"].get<std::string>();
    const std::string msg = error_of([&] { Template(source, "tpl").render(vars_of(c["vars"])); });
    EXPECT_NE(msg.find(": " + c["message"].get<std::string>()), std::string::npos) << msg;
  }
}

// ---- semantics, with expectations written by hand ------------------------------------------------

TEST(Jinja, SetInsideALoopDoesNotLeakButANamespaceDoes) {
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [5, 6] %}{% set x = i %}{% endfor %}{{ x }}"), "1");
  EXPECT_EQ(render("{% set ns = namespace(x=1) %}{% for i in [5, 6] %}{% set ns.x = i %}{% endfor %}{{ ns.x }}"), "6");
  EXPECT_EQ(render("{% for i in [1, 2] %}{{ y is defined }}{% set y = i %}{% endfor %}"), "FalseFalse");
  EXPECT_EQ(render("{% if true %}{% set y = 3 %}{% endif %}{{ y }}"), "3");
}

// jinja2 decides per frame, before running, which names are the frame's own: one the top level
// assigns (outside an if) before reading it is undefined until then, even inside an earlier loop
// and even when the caller passed a value.
TEST(Jinja, AFramesOwnNameHidesTheCallersUntilAssigned) {
  const ojson v = {{"s", "ctx"}};
  EXPECT_EQ(render("{% for i in [1] %}[{{ s }}]{% endfor %}{% set s = 2 %}{{ s }}", v), "[]2");
  EXPECT_EQ(render("{{ s }}{% for i in [1] %}[{{ s }}]{% endfor %}{% set s = 2 %}", v), "ctx[ctx]");
  EXPECT_EQ(render("{% for i in [1] %}[{{ s }}]{% endfor %}{% if true %}{% set s = 2 %}{% endif %}", v), "[ctx]");
  EXPECT_EQ(render("{% macro m() %}[{{ s }}]{% endmacro %}{{ m() }}{% set s = 2 %}{{ m() }}", v), "[][2]");
}

TEST(Jinja, FiltersBindTighterThanOperators) {
  EXPECT_EQ(render("{{ -x|abs }}", {{"x", 4}}), "4");            // abs(-x)
  EXPECT_EQ(render("{{ 'a' ~ 'b'|upper }}"), "aB");
  EXPECT_EQ(render("{{ 1 ~ 2 + 3 ~ 4 }}"), "1234");             // ~ binds tighter than +
  EXPECT_EQ(render("{{ not x is defined }}"), "True");          // not (x is defined)
  EXPECT_EQ(render("{{ ' ' + m | trim + '!' }}", {{"m", " hi "}}), " hi!");
}

TEST(Jinja, SlicingIndexingAndLoopVariables) {
  const ojson v = {{"l", {0, 1, 2, 3}}};
  EXPECT_EQ(render("{{ l[1:] }}|{{ l[::-1] }}|{{ l[-1] }}|{{ l[1:3] }}|{{ 'héllo'[1:3] }}", v), "[1, 2, 3]|[3, 2, 1, 0]|3|[1, 2]|él");
  EXPECT_EQ(render("{% for x in l %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.first|int }}{{ loop.last|int }}{{ loop.length }} {% endfor %}", v),
            "104104 213004 322004 431014 ");
  EXPECT_EQ(render("{% for x in l if x > 1 %}{{ loop.index }}/{{ loop.length }} {% else %}none{% endfor %}", v), "1/2 2/2 ");
  EXPECT_EQ(render("{% for x in l if x > 9 %}{{ x }}{% else %}none{% endfor %}", v), "none");
}

TEST(Jinja, WhitespaceControlAsTransformersSetsIt) {
  EXPECT_EQ(render("{% for x in [1, 2] %}\n  {{ x }}\n{% endfor %}\n"), "  1\n  2\n");  // trim_blocks, last newline dropped
  EXPECT_EQ(render("a\n    {% if true %}\nb\n    {% endif %}\nc"), "a\nb\nc");          // lstrip_blocks
  EXPECT_EQ(render("a   {{- 'b' -}}   \n c"), "abc");
  EXPECT_EQ(render("x {# comment #} y"), "x  y");
  EXPECT_EQ(render("a\n\n"), "a\n");
}

TEST(Jinja, UndefinedIsEmptyAndFalsyUntilYouLookInsideIt) {
  EXPECT_EQ(render("[{{ nope }}][{{ d.nope }}]{{ nope is defined }}{{ not nope }}{{ nope|length }}", {{"d", ojson::object()}}),
            "[][]FalseTrue0");
  EXPECT_NE(error_of([] { render("{{ nope.x }}"); }).find("'nope' is undefined"), std::string::npos);
  EXPECT_NE(error_of([] { render("{{ d.a.b }}", {{"d", ojson::object()}}); }).find("has no attribute 'a'"), std::string::npos);
}

TEST(Jinja, PythonPrintsValues) {
  EXPECT_EQ(render("{{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1e16 }} {{ 2.5e-7 }} {{ none }} {{ true }} {{ [1, 'a', none] }} {{ {'k': [1.5]} }}"),
            "1.0 0.30000000000000004 1e+16 2.5e-07 None True [1, 'a', None] {'k': [1.5]}");
  EXPECT_EQ(render("{{ x|tojson }}", {{"x", {{"b", 1}, {"a", "é\n"}}}}), "{\"b\": 1, \"a\": \"é\\n\"}");
  EXPECT_EQ(render("{{ x|tojson(ensure_ascii=true) }}", {{"x", "é😀"}}), "\"\\u00e9\\ud83d\\ude00\"");
}

TEST(Jinja, MacrosAndBlockSet) {
  EXPECT_EQ(render("{% macro b(x, y='!') %}<{{ x }}{{ y }}>{% endmacro %}{{ b(1) }}{{ b(2, y='?') }}"), "<1!><2?>");
  EXPECT_EQ(render("{% set s %}{{ 1 + 1 }}x{% endset %}{{ s * 2 }}"), "2x2x");
}

// ---- errors name the line --------------------------------------------------------------------------

TEST(Jinja, SyntaxErrorsNameTheLine) {
  EXPECT_NE(error_of([] { Template("a\nb\n{{ 1 + }}\n", "my.jinja"); }).find("my.jinja, line 3:"), std::string::npos);
  EXPECT_NE(error_of([] { Template("x\n{% frobnicate %}", "t"); }).find("line 2: unknown or unsupported tag 'frobnicate'"),
            std::string::npos);
  const std::string unclosed = error_of([] { Template("a\n{% if x %}\nb\n", "t"); });
  EXPECT_NE(unclosed.find("opened on line 2"), std::string::npos) << unclosed;
  EXPECT_NE(unclosed.find("'endif'"), std::string::npos) << unclosed;
  EXPECT_NE(error_of([] { Template("{% endfor %}", "t"); }).find("line 1: unexpected 'endfor'"), std::string::npos);
  EXPECT_NE(error_of([] { Template("\n\n{{ 'abc }}", "t"); }).find("line 3: unterminated string"), std::string::npos);
  EXPECT_NE(error_of([] { Template("{{ x ", "t"); }).find("missing '}}'"), std::string::npos);
  EXPECT_NE(error_of([] { Template("{% break %}", "t"); }).find("'break' outside a loop"), std::string::npos);
  EXPECT_NE(error_of([] { Template("{# never closed", "t"); }).find("missing end of comment"), std::string::npos);
}

TEST(Jinja, RuntimeErrorsNameTheLine) {
  const std::string e = error_of([] { render("ok\n{% for m in ms %}\n{{ m.x.y }}\n{% endfor %}", {{"ms", {ojson::object()}}}); });
  EXPECT_NE(e.find("t, line 3: 'dict object' has no attribute 'x'"), std::string::npos) << e;
  EXPECT_EQ(error_of([] { render("a\n\n{{ raise_exception('Roles must alternate') }}"); }), "t, line 3: Roles must alternate");
  EXPECT_NE(error_of([] { render("{{ 'a' + 1 }}"); }).find("unsupported operand type(s) for +: 'str' and 'int'"),
            std::string::npos);
  EXPECT_NE(error_of([] { render("{{ 'x'|nosuch }}"); }).find("no filter named 'nosuch'"), std::string::npos);
  // Outside an if, jinja2 refuses an unknown filter or test when loading; inside one, when run.
  EXPECT_NE(error_of([] { Template("a\n{% for x in [] %}{{ x is nosuch }}{% endfor %}", "t"); }).find("t, line 2: no test named"),
            std::string::npos);
  EXPECT_EQ(render("{% if false %}{{ x|nosuch }}{% endif %}ok"), "ok");
}

// Hostile templates end in an error, not a crash or a hang.
TEST(Jinja, LimitsOnWhatATemplateCanDemand) {
  EXPECT_NE(error_of([] { render("{{ range(1000000)|length }}"); }).find("range too big"), std::string::npos);
  EXPECT_NE(error_of([] { render("{% set ns = namespace(x=[]) %}{% for i in range(500) %}{% set ns.x = [ns.x] %}{% endfor %}"); })
                .find("nested deeper than"),
            std::string::npos);
  EXPECT_NE(error_of([] { Template("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}", "t"); }).find("nested deeper"),
            std::string::npos);
  EXPECT_NE(error_of([] { render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"); }).find("macros nested deeper"),
            std::string::npos);
  EXPECT_NE(error_of([] { render("{{ 'x' * 100000000 }}"); }).find("string too long"), std::string::npos);
  EXPECT_NE(error_of([] { render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"); })
                .find("more than a million loop iterations"),
            std::string::npos);
}

// ---- a model directory's template ----------------------------------------------------------------

struct ModelDir {
  std::string dir = skytest::temp_dir("chat-template");
  ~ModelDir() { fs::remove_all(dir); }
  void config(const json& j) const { spit(dir + "/tokenizer_config.json", j.dump()); }
};

sky::ChatTokens toks(std::optional<std::string> bos, std::optional<std::string> eos) {
  sky::ChatTokens t;
  t.bos = std::move(bos);
  t.eos = std::move(eos);
  return t;
}

const json kMessages = json::array({{{"role", "user"}, {"content", "Hi"}}});

TEST(ChatTemplateLoad, ConfigStringOrListOrJinjaFile) {
  ModelDir m;
  EXPECT_FALSE(ChatTemplate::from_model_dir(m.dir));  // nothing at all
  m.config({{"bos_token", "<s>"}});
  EXPECT_FALSE(ChatTemplate::from_model_dir(m.dir));  // a config without a template

  m.config({{"chat_template", "{{ bos_token }}{{ messages[0].content }}"}, {"bos_token", {{"content", "<B>"}, {"lstrip", false}}}});
  auto t = ChatTemplate::from_model_dir(m.dir);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->render(kMessages, false), "<B>Hi");

  m.config({{"chat_template", json::array({{{"name", "tool_use"}, {"template", "T"}}, {{"name", "default"}, {"template", "D"}}})}});
  EXPECT_EQ(ChatTemplate::from_model_dir(m.dir)->render(kMessages, false), "D");

  // chat_template.jinja wins over the config's, as in transformers; tokens still come from the config.
  m.config({{"chat_template", "config"}, {"eos_token", "</s>"}});
  spit(m.dir + "/chat_template.jinja", "file{{ eos_token }}\n");
  t = ChatTemplate::from_model_dir(m.dir);
  EXPECT_EQ(t->render(kMessages, false), "file</s>");
  EXPECT_EQ(t->origin(), m.dir + "/chat_template.jinja");
}

TEST(ChatTemplateLoad, TokensFromSpecialTokensMapWhenTheConfigHasNone) {
  ModelDir m;
  m.config({{"chat_template", "{{ bos_token }}|{{ eos_token }}|{{ pad_token is defined }}"}});
  spit(m.dir + "/special_tokens_map.json", R"({"bos_token": {"content": "<s>"}, "eos_token": "</s>"})");
  EXPECT_EQ(ChatTemplate::from_model_dir(m.dir)->render(kMessages, false), "<s>|</s>|False");
}

TEST(ChatTemplateLoad, MalformedConfigsAreErrorsNamingTheFile) {
  ModelDir m;
  const std::string cfg = m.dir + "/tokenizer_config.json";
  auto err = [&](const std::string& text) {
    spit(cfg, text);
    try {
      ChatTemplate::from_model_dir(m.dir);
    } catch (const sky::Error& e) {
      return std::string(e.what());
    }
    ADD_FAILURE() << "accepted: " << text;
    return std::string();
  };
  EXPECT_NE(err("{\"chat_template\": ").find(cfg + ": not valid JSON"), std::string::npos);
  EXPECT_NE(err("[1]").find(cfg + ": expected a JSON object"), std::string::npos);
  EXPECT_NE(err("{\"chat_template\": 5}").find("chat_template must be a string or a list"), std::string::npos);
  EXPECT_NE(err(R"({"chat_template": [{"name": "rag", "template": "x"}]})").find("none named 'default'"), std::string::npos);
  EXPECT_NE(err(R"({"chat_template": [{"name": "default"}]})").find("\"template\": string"), std::string::npos);
  EXPECT_NE(err(R"({"chat_template": "x", "eos_token": 3})").find(cfg + ": eos_token must be a string"), std::string::npos);
  EXPECT_NE(err(R"({"chat_template": "x", "added_tokens_decoder": {"a": {"content": "<x>"}}})").find("'a' is not a token id"),
            std::string::npos);
  EXPECT_NE(err(std::string(100, '[') + std::string(100, ']')).find("nested deeper"), std::string::npos);
  const std::string syntax = err(R"({"chat_template": "ok\n{% if %}"})");
  EXPECT_NE(syntax.find(cfg + " chat_template, line 2:"), std::string::npos) << syntax;
}

// The end-of-turn rule on each style: what follows an assistant's content, then eos.
TEST(ChatTemplateStops, DerivedFromWhatFollowsAReply) {
  auto stops = [](const char* file, sky::ChatTokens tok) {
    return ChatTemplate(slurp(kData + "/" + file), file, std::move(tok)).stop_strings();
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(stops("chatml_style.jinja", toks(std::nullopt, "<|endoftext|>")), (V{"<|im_end|>", "<|endoftext|>"}));
  EXPECT_EQ(stops("chatml_style.jinja", toks(std::nullopt, "<|im_end|>")), (V{"<|im_end|>"}));
  EXPECT_EQ(stops("llama3_style.jinja", toks("<|begin_of_text|>", "<|end_of_text|>")), (V{"<|eot_id|>", "<|end_of_text|>"}));
  EXPECT_EQ(stops("mixtral_style.jinja", toks("<s>", "</s>")), (V{"</s>"}));
  EXPECT_EQ(stops("granite_style.jinja", toks(std::nullopt, "<|end_of_text|>")), (V{"<|end_of_text|>"}));
  EXPECT_EQ(stops("deepseek_style.jinja", toks("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")), (V{"<｜end▁of▁sentence｜>"}));
  EXPECT_EQ(stops("qwen_think_style.jinja", toks(std::nullopt, "<|im_end|>")), (V{"<|im_end|>"}));
  // Only whitespace after the reply, or a template that refuses the probe: eos alone.
  EXPECT_EQ(ChatTemplate("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}", "t", toks(std::nullopt, "</s>"))
                .stop_strings(),
            V{"</s>"});
  EXPECT_EQ(ChatTemplate("{{ raise_exception('no') }}", "t", toks(std::nullopt, "</s>")).stop_strings(), V{"</s>"});
  EXPECT_TRUE(ChatTemplate("{{ messages[0].content }}", "t").stop_strings().empty());
}

TEST(ChatTemplateRender, ExtraVariablesAndKeyOrder) {
  ChatTemplate t(slurp(kData + "/chatml_style.jinja"), "chatml", toks(std::nullopt, "<|im_end|>"));
  const auto& c = fixture("chatml/tools");
  ojson extra = {{"tools", c["vars"]["tools"]}};
  EXPECT_EQ(t.render(c["vars"]["messages"], true, extra), c["expected"].get<std::string>());
  // nlohmann::json sorts keys: tojson then differs from Python, which is why ordered_json exists.
  EXPECT_NE(t.render(json(c["vars"]["messages"]), true, json(extra)), c["expected"].get<std::string>());
  EXPECT_THROW(t.render(json::object(), true), sky::Error);
  json deep = "x";
  for (int k = 0; k < 300; k++) deep = json::array({deep});
  EXPECT_THROW(t.render(json::array({{{"role", "user"}, {"content", deep}}}), true), sky::Error);
}

// ---- special tokens to ids -------------------------------------------------------------------------

struct Trained {
  std::string dir;
  sky::Tokenizer tok;
};

bool g_trained = false;

const Trained& trained() {
  static Trained t = [] {
    g_trained = true;
    Trained r{skytest::temp_dir("chat-tok"), sky::Tokenizer()};
    const std::vector<std::string> words = {"the", "model", "expert", "router", "token", "hello", "world", "says",
                                            "user", "assistant", "INST", "is", "a", "of", "we", "see"};
    sky::Rng rng(5);
    std::string corpus;
    for (int line = 0; line < 1500; line++) {
      for (int w = 0, n = 3 + int(rng.below(10)); w < n; w++) corpus += (w ? " " : "") + words[rng.below(words.size())];
      corpus += ".\n";
    }
    spit(r.dir + "/corpus.txt", corpus);
    r.tok = sky::Tokenizer::train({r.dir + "/corpus.txt"}, r.dir + "/tokenizer.model", 300);
    return r;
  }();
  return t;
}

// Removes the tokenizer's directory once every test has run.
struct Cleanup : ::testing::Environment {
  void TearDown() override {
    if (g_trained) fs::remove_all(trained().dir);
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new Cleanup);

TEST(ChatTemplateEncode, SpecialTokensInTheTextBecomeTheirIds) {
  const auto& tok = trained().tok;
  sky::ChatTokens ct = toks("<s>", "</s>");
  ct.added = {{"<|im_end|>", 290}, {"<|im", 291}};
  ChatTemplate t("{{ bos_token }}{% for m in messages %}[INST] {{ m.content }}<|im_end|>{% endfor %}", "t", ct);
  const std::string text = t.render(kMessages, false);
  ASSERT_EQ(text, "<s>[INST] Hi<|im_end|>");
  const auto ids = t.encode(tok, text);
  auto plain = tok.encode("[INST] Hi");
  std::vector<int32_t> want = {tok.bos_id()};  // "<s>" is the SentencePiece bos piece
  want.insert(want.end(), plain.begin(), plain.end());
  want.push_back(290);  // longest match: "<|im_end|>", not "<|im" then text
  EXPECT_EQ(ids, want);
  EXPECT_EQ(t.stop_token_ids(tok), (std::vector<int32_t>{290, tok.eos_id()}));
  EXPECT_EQ(t.stop_strings(), (std::vector<std::string>{"<|im_end|>", "</s>"}));
  // Without the template's special tokens the same text is ordinary pieces.
  EXPECT_NE(tok.encode(text), ids);
}

// What serve's chat endpoint gets from infer/api when the model has a template.
TEST(ChatTemplateApi, ChatRequestsRenderThroughTheTemplate) {
  const auto& tok = trained().tok;
  sky::ChatTokens ct = toks("<s>", "</s>");
  ct.added = {{"<|im_end|>", 299}};
  ChatTemplate t("{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}<|im_end|>{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}",
                 "t", ct);
  sky::ApiLimits lim;
  lim.model_name = "m";
  lim.tok = &tok;
  lim.vocab_size = 300;
  lim.context = 4096;
  lim.max_prompt_tokens = 4000;
  lim.max_tokens_limit = 100;
  lim.chat_template = &t;
  const json body = {{"messages", {{{"role", "developer"}, {"content", "Be brief."}},
                                   {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "Hi"}}, {{"type", "text"}, {"text", " there"}}}}}}},
                     {"stop", "x"}};
  const sky::GenRequest r = sky::parse_chat_request(body, lim);
  // Roles and parts as the API normalizes them; the template's "<s>" is the only bos.
  const json msgs = {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hi there"}}};
  EXPECT_EQ(r.prompt, t.encode(tok, t.render(msgs, true)));
  EXPECT_EQ(r.prompt[0], tok.bos_id());
  EXPECT_NE(r.prompt[1], tok.bos_id());
  EXPECT_EQ(r.stop, (std::vector<std::string>{"x", "<|im_end|>", "</s>"}));
  EXPECT_EQ(r.stop_ids, (std::vector<int32_t>{299, tok.eos_id()}));

  // A prompt surely too long is refused before it is tokenized.
  size_t encoded = 0;
  lim.on_encode = [&](size_t bytes) { encoded += bytes; };
  lim.max_prompt_tokens = 50;
  json long_body = body;
  long_body["messages"][1]["content"] = std::string(20000, 'x');
  try {
    sky::parse_chat_request(long_body, lim);
    ADD_FAILURE() << "accepted";
  } catch (const sky::ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.code, "context_length_exceeded") << e.what();
  }
  EXPECT_EQ(encoded, 0u);
  sky::parse_chat_request(body, lim);
  EXPECT_GT(encoded, 0u);
  lim.max_prompt_tokens = 4000;

  // A template that refuses the conversation: a 400 with its message (and no server path).
  ChatTemplate strict("{% if messages|length > 1 %}{{ raise_exception('one message only') }}{% endif %}", "/srv/m/t.jinja");
  lim.chat_template = &strict;
  try {
    sky::parse_chat_request(body, lim);
    ADD_FAILURE() << "accepted";
  } catch (const sky::ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_NE(std::string(e.what()).find("refused them (line 1): one message only"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find("/srv/m"), std::string::npos) << e.what();
  }
  // Without a template: the plain one, unchanged.
  lim.chat_template = nullptr;
  EXPECT_EQ(sky::parse_chat_request(body, lim).stop, (std::vector<std::string>{"x", sky::kChatStop}));
}

// ---- the commands -----------------------------------------------------------------------------------

struct RunResult {
  int code = -1;
  std::string out, err;
};

RunResult run(const std::vector<std::string>& args) {
  static const ModelDir io_dir;  // removed at exit
  const std::string& io = io_dir.dir;
  std::vector<std::string> full = {SKYMOE_BIN};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, (io + "/out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, (io + "/err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = 0;
  RunResult r;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return r;
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status)) r.code = WEXITSTATUS(status);
  r.out = slurp(io + "/out");
  r.err = slurp(io + "/err");
  return r;
}

// A model directory holding only tokenizer_config.json with a fixture's template and tokens.
void config_from_fixture(const ModelDir& m, const ojson& c) {
  json cfg = {{"chat_template", slurp(kData + "/" + c["template_file"].get<std::string>())}};
  for (const char* k : {"bos_token", "eos_token"})
    if (c["vars"].contains(k)) cfg[k] = c["vars"][k];
  m.config(cfg);
}

TEST(ChatTemplateCli, PrintsThePromptExactly) {
  for (const char* name : {"chatml/system_multi_turn", "mixtral/system_multi_turn", "deepseek/systems_and_history",
                           "granite/one_turn", "llama3/no_system"}) {
    const auto& c = fixture(name);
    ModelDir m;
    config_from_fixture(m, c);
    spit(m.dir + "/messages.json", c["vars"]["messages"].dump());
    std::vector<std::string> args = {"chat-template", "--model", m.dir, "--messages", m.dir + "/messages.json"};
    if (c["vars"]["add_generation_prompt"].get<bool>()) args.push_back("--add-generation-prompt");
    RunResult r = run(args);
    EXPECT_EQ(r.code, 0) << name << ": " << r.err;
    EXPECT_EQ(r.out, c["expected"].get<std::string>()) << name;  // no newline added
  }
}

TEST(ChatTemplateCli, AnObjectCarriesToolsAndOtherVariables) {
  const auto& c = fixture("chatml/tools");
  ModelDir m;
  config_from_fixture(m, c);
  spit(m.dir + "/conv.json", ojson({{"messages", c["vars"]["messages"]}, {"tools", c["vars"]["tools"]}}).dump());
  RunResult r = run({"chat-template", "--model", m.dir, "--messages", m.dir + "/conv.json", "--add-generation-prompt"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, c["expected"].get<std::string>());
  r = run({"chat-template", "--model", m.dir, "--messages", m.dir + "/conv.json", "--stop-strings"});
  EXPECT_EQ(r.out, "[\"<|im_end|>\"]\n");
}

TEST(ChatTemplateCli, FailuresExitNonZeroWithTheMessage) {
  const auto& c = fixture("mixtral/roles_not_alternating");
  ModelDir m;
  config_from_fixture(m, c);
  spit(m.dir + "/messages.json", c["vars"]["messages"].dump());
  RunResult r = run({"chat-template", "--model", m.dir, "--messages", m.dir + "/messages.json"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(r.out.empty()) << r.out;
  EXPECT_NE(r.err.find("line 12: " + c["message"].get<std::string>()), std::string::npos) << r.err;

  spit(m.dir + "/messages.json", "{\"role\": \"user\"}");
  r = run({"chat-template", "--model", m.dir, "--messages", m.dir + "/messages.json"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("an object with a \"messages\" array"), std::string::npos) << r.err;

  spit(m.dir + "/tokenizer_config.json", "{\"chat_template\": \"x\",");
  r = run({"chat-template", "--model", m.dir, "--messages", m.dir + "/messages.json"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find(m.dir + "/tokenizer_config.json: not valid JSON"), std::string::npos) << r.err;

  fs::remove(m.dir + "/tokenizer_config.json");
  r = run({"chat-template", "--model", m.dir, "--messages", m.dir + "/messages.json"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("has no chat template"), std::string::npos) << r.err;

  r = run({"chat-template", "--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("skymoe chat-template"), std::string::npos);
}

// generate --chat: the template's prompt (its "<s>" text as the bos id, no second bos) and a stop
// at the template's end of turn.
TEST(GenerateChat, UsesTheTemplateAndStopsAtItsEndOfTurn) {
  const auto& tr = trained();
  ModelDir m;
  fs::copy_file(tr.dir + "/tokenizer.model", m.dir + "/tokenizer.model");
  sky::ModelConfig cfg = sky::ModelConfig::preset("tiny");
  cfg.vocab_size = tr.tok.vocab_size();
  sky::Model::random(cfg, 3).save(m.dir);
  // The turn ends with "e": almost every word of the corpus has one, so greedy text meets it soon.
  const std::string tpl = "{{ bos_token }}{% for m in messages %}{{ m.role }}: {{ m.content }}{% if m.role == 'assistant' %}e{% endif %} {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
  m.config({{"chat_template", tpl}, {"bos_token", "<s>"}, {"eos_token", "</s>"}});
  RunResult r = run({"generate", "--model", m.dir, "--chat", "--prompt", "hello world", "--max-tokens", "40", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  ChatTemplate t(tpl, "t", toks("<s>", "</s>"));
  EXPECT_EQ(t.stop_strings(), (std::vector<std::string>{"e", "</s>"}));
  const auto want = t.encode(tr.tok, t.render(json::array({{{"role", "user"}, {"content", "hello world"}}}), true));
  EXPECT_EQ(j["prompt_ids"].get<std::vector<int32_t>>(), want);
  EXPECT_EQ(want[0], tr.tok.bos_id());
  EXPECT_NE(want[1], tr.tok.bos_id());
  EXPECT_EQ(j["finish_reason"], "stop") << r.out;
  EXPECT_EQ(j["text"].get<std::string>().find('e'), std::string::npos) << r.out;
  EXPECT_LT(j["generated_ids"].size(), 40u);

  // Without a template: the plain "User: ...\nAssistant:" prompt, bos first.
  fs::remove(m.dir + "/tokenizer_config.json");
  r = run({"generate", "--model", m.dir, "--chat", "--system", "Be brief.", "--prompt", "hello", "--max-tokens", "4", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto plain = tr.tok.encode("System: Be brief.\nUser: hello\nAssistant:");
  plain.insert(plain.begin(), cfg.bos_token_id);
  EXPECT_EQ(json::parse(r.out)["prompt_ids"].get<std::vector<int32_t>>(), plain);

  r = run({"generate", "--model", m.dir, "--chat", "--prompt-ids", "1,2", "--max-tokens", "4"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--chat takes --prompt TEXT"), std::string::npos) << r.err;
}

}  // namespace
