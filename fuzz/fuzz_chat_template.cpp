// A chat template (the model directory's chat_template.jinja or tokenizer_config.json's string):
// parse it (io/jinja), derive its stop strings (a probe render) and render it over a conversation
// with tools, as `skymoe chat-template` and serve do. An input holding "\n#messages#\n" is split
// there: the template, then the messages JSON (the request's side). Expected: a prompt, or
// sky::Error (a syntax error, raise_exception, a runtime error, a limit). Findings besides crashes
// and sanitizer reports: an error message that does not name the template's line, a prompt over
// the 64 MiB output limit.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "fuzz_util.h"
#include "io/chat_template.h"
#include "io/json_input.h"

namespace {

const nlohmann::ordered_json& default_messages() {
  static const nlohmann::ordered_json m = nlohmann::ordered_json::parse(R"([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi <b>there</b> & é 🙂"},
    {"role": "assistant", "content": "<think>x</think>Hello.", "tool_calls": [
      {"type": "function", "function": {"name": "get", "arguments": {"city": "Oslo"}}}]},
    {"role": "tool", "content": "{\"t\": 1}"},
    {"role": "user", "content": [{"type": "text", "text": "parts"}]}])");
  return m;
}

const nlohmann::ordered_json& extra() {
  static const nlohmann::ordered_json e = nlohmann::ordered_json::parse(R"({"tools": [
    {"type": "function", "function": {"name": "get", "description": "d",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]})");
  return e;
}

void check_error(const sky::Error& e) {
  const std::string what = e.what();
  FUZZ_CHECK(what.rfind("tpl, line ", 0) == 0 || what.rfind("chat messages", 0) == 0,
             "an error that names no template line: %s", what.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const auto parts = fuzz::split(in, "\n#messages#\n", 2);
  std::optional<sky::ChatTemplate> t;
  sky::ChatTokens tokens;
  tokens.bos = "<s>";
  tokens.eos = "</s>";
  try {
    t.emplace(parts[0], "tpl", tokens);
  } catch (const sky::Error& e) {
    check_error(e);
    return 0;
  }
  nlohmann::ordered_json messages = default_messages();
  if (parts.size() > 1) {
    try {
      messages = sky::parse_ordered_json(std::string(parts[1]), "messages");
    } catch (const sky::Error&) {
      return 0;
    }
    if (!messages.is_array()) return 0;
  }
  for (bool gen : {false, true}) {
    try {
      const std::string out = t->render(messages, gen, extra());
      FUZZ_CHECK(out.size() <= (size_t(64) << 20), "a prompt of %zu bytes", out.size());
    } catch (const sky::Error& e) {
      check_error(e);
    }
  }
  return 0;
}
