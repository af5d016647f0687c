#include "infer/api.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "core/error.h"
#include "io/chat_template.h"
#include "io/json_input.h"

namespace sky {

using json = nlohmann::json;

ApiError::ApiError(int status, const std::string& message, std::string param, std::string code)
    : std::runtime_error(message),
      status(status),
      type(status >= 500 ? "server_error" : "invalid_request_error"),
      param(std::move(param)),
      code(std::move(code)) {}

json error_body(const ApiError& e) {
  auto opt = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
  return {{"error", {{"message", e.what()}, {"type", e.type}, {"param", opt(e.param)}, {"code", opt(e.code)}}}};
}

std::string dump_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json parse_json_body(const std::string& body) {
  json j;
  try {
    j = parse_json(body, "request body");
  } catch (const Error& e) {
    // Also ill-formed UTF-8, unpaired surrogate escapes, numbers out of range (1e999), deep nesting.
    throw ApiError(400, fmt::format("We could not parse the JSON body of your request: {}", e.what()), "",
                   "invalid_json");
  }
  if (!j.is_object())
    throw ApiError(400, fmt::format("The request body must be a JSON object, got {}", j.type_name()), "", "invalid_json");
  return j;
}

namespace {

// A field, or null when absent: OpenAI clients send null to mean "not set".
const json* field(const json& body, const std::string& name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

// "a string", "an array": what a wrong-typed value was, without echoing (possibly huge) contents.
std::string a_type(const json& v) {
  if (v.is_number_integer()) return "an integer";
  if (v.is_number()) return "a number";
  std::string t = v.type_name();
  return (t == "array" || t == "object" ? "an " : "a ") + t;
}

[[noreturn]] void wrong_type(const std::string& name, const char* want, const json& v) {
  throw ApiError(400, fmt::format("Invalid type for '{}': expected {}, but got {} instead.", name, want, a_type(v)),
                 name, "invalid_type");
}

[[noreturn]] void bad_value(const std::string& name, const std::string& why) {
  throw ApiError(400, fmt::format("Invalid value for '{}': {}", name, why), name, "invalid_value");
}

[[noreturn]] void unsupported(const std::string& name, const std::string& why) {
  throw ApiError(400, fmt::format("Unsupported parameter '{}': {}", name, why), name, "unsupported_parameter");
}

// Integer field in [lo, hi]; absent -> def. Floats (even 10.0) are refused like OpenAI does.
int64_t get_int(const json& body, const std::string& name, int64_t def, int64_t lo, int64_t hi) {
  const json* v = field(body, name);
  if (!v) return def;
  if (!v->is_number_integer()) wrong_type(name, "an integer", *v);
  const bool too_big = v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max());
  const int64_t x = too_big ? std::numeric_limits<int64_t>::max() : v->get<int64_t>();
  if (too_big || x < lo || x > hi) bad_value(name, fmt::format("must be between {} and {}, got {}", lo, hi, v->dump()));
  return x;
}

double get_number(const json& body, const std::string& name, double def, double lo, double hi) {
  const json* v = field(body, name);
  if (!v) return def;
  if (!v->is_number()) wrong_type(name, "a number", *v);
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) bad_value(name, fmt::format("must be between {} and {}, got {}", lo, hi, x));
  return x;
}

bool get_bool(const json& body, const std::string& name, bool def) {
  const json* v = field(body, name);
  if (!v) return def;
  if (!v->is_boolean()) wrong_type(name, "a boolean", *v);
  return v->get<bool>();
}

std::vector<std::string> get_stops(const json& body) {
  const json* v = field(body, "stop");
  std::vector<std::string> stops;
  if (!v) return stops;
  if (v->is_string()) {
    stops.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    if (v->size() > 16) bad_value("stop", fmt::format("at most 16 stop strings, got {}", v->size()));
    for (const auto& s : *v) {
      if (!s.is_string()) wrong_type("stop", "a string or an array of strings", s);
      stops.push_back(s.get<std::string>());
    }
  } else {
    wrong_type("stop", "a string or an array of strings", *v);
  }
  for (const auto& s : stops)
    if (s.empty()) bad_value("stop", "stop strings must not be empty");
  return stops;
}

// Fields OpenAI defines that this server does not implement: refused rather than silently ignored,
// unless set to their neutral value.
void reject_unsupported(const json& body, bool chat) {
  for (const char* p : {"n", "best_of"})
    if (const json* v = field(body, p)) {
      if (!v->is_number_integer()) wrong_type(p, "an integer", *v);
      if (*v != 1) unsupported(p, "only one choice per request is supported (1)");
    }
  for (const char* p : {"presence_penalty", "frequency_penalty"})
    if (get_number(body, p, 0, -2, 2) != 0) unsupported(p, "not supported; use 'repetition_penalty' (an extension)");
  if (const json* v = field(body, "logit_bias")) {
    if (!v->is_object()) wrong_type("logit_bias", "an object", *v);
    if (!v->empty()) unsupported("logit_bias", "not supported");
  }
  if (chat) {
    for (const char* p : {"tools", "tool_choice", "functions", "function_call"})
      if (field(body, p)) unsupported(p, "tool calling is not supported");
    if (const json* v = field(body, "response_format"))
      if (!(v->is_object() && v->value("type", json()) == "text")) unsupported("response_format", "only {\"type\": \"text\"}");
  } else {
    if (const json* v = field(body, "suffix")) {
      if (!v->is_string()) wrong_type("suffix", "a string", *v);
      if (!v->get_ref<const std::string&>().empty()) unsupported("suffix", "insertion is not supported");
    }
  }
}

// Completions: "echo" and "logprobs" (null or the number of alternatives). Chat: "logprobs" (a
// boolean) and "top_logprobs", which needs it, as OpenAI has them.
void parse_logprobs(const json& body, GenRequest& r) {
  if (r.chat) {
    r.logprobs = get_bool(body, "logprobs", false);
    if (field(body, "top_logprobs")) {
      r.top_logprobs = int(get_int(body, "top_logprobs", 0, 0, kMaxTopLogprobs));
      if (!r.logprobs) bad_value("top_logprobs", "only allowed when 'logprobs' is true");
    }
  } else {
    r.echo = get_bool(body, "echo", false);
    if (field(body, "logprobs")) {
      r.logprobs = true;
      r.top_logprobs = int(get_int(body, "logprobs", 0, 0, kMaxTopLogprobs));
    }
  }
  r.gen.logprobs = r.logprobs;
  r.gen.prompt_logprobs = r.logprobs && r.echo;
  r.gen.top_logprobs = r.top_logprobs;
}

// Everything but the prompt: model, sampling, stream flags, stop strings, log-probabilities.
void parse_common(const json& body, const ApiLimits& lim, GenRequest& r) {
  if (const json* v = field(body, "model")) {
    if (!v->is_string()) wrong_type("model", "a string", *v);
    if (v->get_ref<const std::string&>() != lim.model_name)
      throw ApiError(404, fmt::format("The model '{}' does not exist; this server serves '{}'.", v->get<std::string>(),
                                      lim.model_name),
                     "model", "model_not_found");
  }
  reject_unsupported(body, r.chat);
  r.stream = get_bool(body, "stream", false);
  if (const json* v = field(body, "stream_options")) {
    if (!v->is_object()) wrong_type("stream_options", "an object", *v);
    if (!r.stream) bad_value("stream_options", "only allowed when 'stream' is true");
    r.include_usage = get_bool(*v, "include_usage", false);
  }
  SamplerOptions& s = r.gen.sampling;
  s.temperature = get_number(body, "temperature", 1.0, 0, 2);
  s.top_p = get_number(body, "top_p", 1.0, 0, 1);
  if (s.top_p == 0) s.temperature = 0, s.top_p = 1;  // the smallest nucleus is the top token: greedy
  s.top_k = int(std::max<int64_t>(0, get_int(body, "top_k", 0, -1, std::numeric_limits<int32_t>::max())));
  if (field(body, "seed")) {
    s.seed = uint64_t(get_int(body, "seed", 0, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()));
  } else {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    s.seed = rng();
  }
  r.gen.repetition_penalty = get_number(body, "repetition_penalty", 1.0, 0, 1e6);
  if (r.gen.repetition_penalty <= 0) bad_value("repetition_penalty", "must be > 0");
  r.stop = get_stops(body);
  if (!r.stop.empty() && !lim.tok) bad_value("stop", "stop strings need a tokenizer, and this model has none");
  parse_logprobs(body, r);
}

[[noreturn]] void no_tokenizer(const ApiLimits& lim, const char* param) {
  throw ApiError(400, fmt::format("This model has no tokenizer, so text cannot be encoded{}. Send 'prompt' as an "
                                  "array of token ids to /v1/completions instead.", lim.no_tokenizer_hint),
                 param, "no_tokenizer");
}

std::vector<int32_t> encode_text(const std::string& text, const ApiLimits& lim, const char* param) {
  if (!lim.tok) no_tokenizer(lim, param);
  std::vector<int32_t> ids;
  if (lim.add_bos && lim.tok->bos_id() >= 0) ids.push_back(lim.tok->bos_id());
  // Refused before encoding when surely too long: SentencePiece keeps a record per piece while it
  // encodes, 100-200 bytes for each byte of text, and the allocator keeps that memory afterwards.
  // Past this check the text is at most max_prompt_tokens longest pieces, so encoding is bounded.
  const int64_t least = int64_t(ids.size()) + lim.tok->min_tokens(text);
  if (least > lim.max_prompt_tokens)
    throw ApiError(400, fmt::format("The {} has at least {} tokens ({} bytes of text); this server accepts at most {}.",
                                    param, least, text.size(), lim.max_prompt_tokens),
                   param, "context_length_exceeded");
  if (lim.on_encode) lim.on_encode(text.size());
  auto t = lim.tok->encode(text);
  ids.insert(ids.end(), t.begin(), t.end());
  return ids;
}

std::vector<int32_t> token_ids(const json& arr, const ApiLimits& lim) {
  std::vector<int32_t> ids;
  ids.reserve(arr.size());
  for (size_t i = 0; i < arr.size(); i++) {
    const json& v = arr[i];
    if (!v.is_number_integer()) wrong_type("prompt", "a string, an array of token ids or an array of one string", v);
    const bool neg = v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() < 0;
    if (neg || v.get<uint64_t>() >= uint64_t(lim.vocab_size))
      bad_value("prompt", fmt::format("token id {} at position {} is outside the vocabulary [0, {})", v.dump(), i,
                                      lim.vocab_size));
    ids.push_back(int32_t(v.get<int64_t>()));
  }
  return ids;
}

std::vector<int32_t> parse_prompt(const json& body, const ApiLimits& lim) {
  const json* p = field(body, "prompt");
  if (!p) throw ApiError(400, "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter");
  if (p->is_string()) return encode_text(p->get<std::string>(), lim, "prompt");
  if (!p->is_array()) wrong_type("prompt", "a string, an array of token ids or an array of one string", *p);
  if (p->empty()) bad_value("prompt", "the prompt is empty");
  const json& first = (*p)[0];
  if (first.is_string() || first.is_array()) {
    // [text] or [[ids]]: a batch of one. Bigger batches would need n choices per response.
    if (p->size() > 1)
      unsupported("prompt", fmt::format("batches of prompts ({} given) are not supported; send one per request", p->size()));
    return first.is_string() ? encode_text(first.get<std::string>(), lim, "prompt") : token_ids(first, lim);
  }
  return token_ids(*p, lim);
}

std::string chat_content(const json& m, size_t i) {
  const std::string name = fmt::format("messages[{}].content", i);
  const json* c = field(m, "content");
  if (!c) return "";  // e.g. an assistant turn that only called tools
  if (c->is_string()) return c->get<std::string>();
  if (!c->is_array()) wrong_type(name, "a string or an array of text parts", *c);
  std::string text;
  for (const auto& part : *c) {
    if (!part.is_object() || part.value("type", json()) != "text" || !part.contains("text") || !part["text"].is_string())
      bad_value(name, "only parts of the form {\"type\": \"text\", \"text\": \"...\"} are supported");
    text += part["text"].get<std::string>();
  }
  return text;
}

std::vector<ChatMessage> parse_messages(const json& body) {
  const json* ms = field(body, "messages");
  if (!ms) throw ApiError(400, "Missing required parameter: 'messages'.", "messages", "missing_required_parameter");
  if (!ms->is_array()) wrong_type("messages", "an array", *ms);
  if (ms->empty()) bad_value("messages", "at least one message is required");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < ms->size(); i++) {
    const json& m = (*ms)[i];
    if (!m.is_object()) wrong_type(fmt::format("messages[{}]", i), "an object", m);
    const std::string rname = fmt::format("messages[{}].role", i);
    const json* r = field(m, "role");
    if (!r) throw ApiError(400, fmt::format("Missing required parameter: '{}'.", rname), rname, "missing_required_parameter");
    if (!r->is_string()) wrong_type(rname, "a string", *r);
    std::string role = r->get<std::string>();
    if (role == "developer") role = "system";  // OpenAI's newer name for the system turn
    if (role != "system" && role != "user" && role != "assistant")
      bad_value(rname, fmt::format("role '{}' is not supported (system, user, assistant)", r->get<std::string>()));
    out.push_back({role, chat_content(m, i)});
  }
  return out;
}

// The model's template over the validated messages, its special tokens as their ids. A template
// that raises (roles not alternating, say) refuses the conversation: a 400 with its message.
std::vector<int32_t> templated_prompt(const ChatTemplate& t, const std::vector<ChatMessage>& msgs, const ApiLimits& lim) {
  if (!lim.tok) no_tokenizer(lim, "messages");
  json arr = json::array();
  for (const auto& m : msgs) arr.push_back({{"role", m.role}, {"content", m.content}});
  std::string text;
  try {
    text = t.render(arr, true);
  } catch (const jinja::TemplateError& e) {
    bad_value("messages", fmt::format("the model's chat template refused them (line {}): {}", e.line, e.message));
  }
  const int64_t least = t.min_tokens(*lim.tok, text);  // as encode_text: refused before encoding
  if (least > lim.max_prompt_tokens)
    throw ApiError(400, fmt::format("The messages have at least {} tokens ({} bytes of text); this server accepts at most {}.",
                                    least, text.size(), lim.max_prompt_tokens),
                   "messages", "context_length_exceeded");
  if (lim.on_encode) lim.on_encode(text.size());
  return t.encode(*lim.tok, text);
}

// max_tokens against the limit and the context left after the prompt. `def` applies when absent.
// 0 only with echo: the prompt's text and log-probabilities alone, as OpenAI allows.
void set_max_tokens(const json& body, const char* name, const ApiLimits& lim, GenRequest& r, int def, const char* what) {
  const int P = int(r.prompt.size());
  if (P > lim.max_prompt_tokens)
    throw ApiError(400, fmt::format("The {} has {} tokens; this server accepts at most {}.", what, P, lim.max_prompt_tokens),
                   r.chat ? "messages" : "prompt", "context_length_exceeded");
  const int room = lim.context - P;
  if (!field(body, name)) {
    r.gen.max_tokens = std::max(1, std::min({def, lim.max_tokens_limit, room}));
    return;
  }
  r.gen.max_tokens = int(get_int(body, name, 0, r.echo ? 0 : 1, lim.max_tokens_limit));
  if (r.gen.max_tokens > room)
    throw ApiError(400, fmt::format("This model's maximum context length is {} tokens. However, you requested {} tokens "
                                    "({} in the {}, {} for the completion).",
                                    lim.context, P + r.gen.max_tokens, P, what, r.gen.max_tokens),
                   name, "context_length_exceeded");
}

}  // namespace

std::string chat_prompt(const std::vector<ChatMessage>& messages) {
  std::string s;
  for (const auto& m : messages) {
    const char* role = m.role == "system" ? "System" : m.role == "user" ? "User" : "Assistant";
    s += fmt::format("{}: {}\n", role, m.content);
  }
  return s + "Assistant:";
}

GenRequest parse_completion_request(const json& body, const ApiLimits& lim) {
  GenRequest r;
  parse_common(body, lim, r);
  r.prompt = parse_prompt(body, lim);
  if (r.prompt.empty()) bad_value("prompt", "the prompt is empty");
  set_max_tokens(body, "max_tokens", lim, r, 16, "prompt");  // 16: OpenAI's completions default
  return r;
}

GenRequest parse_chat_request(const json& body, const ApiLimits& lim) {
  GenRequest r;
  r.chat = true;
  parse_common(body, lim, r);
  auto msgs = parse_messages(body);
  if (lim.chat_template) {
    r.prompt = templated_prompt(*lim.chat_template, msgs, lim);
    const auto& stops = lim.chat_template->stop_strings();
    r.stop.insert(r.stop.end(), stops.begin(), stops.end());
    r.stop_ids = lim.chat_template->stop_token_ids(*lim.tok);
  } else {
    r.prompt = encode_text(chat_prompt(msgs), lim, "messages");
    r.stop.push_back(kChatStop);
  }
  // Chat defaults to "until the reply ends": the whole remaining context (capped by the limit).
  const char* name = field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  set_max_tokens(body, name, lim, r, std::numeric_limits<int>::max(), "messages");
  return r;
}

json usage_json(int prompt_tokens, int completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

static json envelope(const ResponseMeta& m, const char* object, json choice) {
  return {{"id", m.id}, {"object", object}, {"created", m.created}, {"model", m.model},
          {"choices", json::array({std::move(choice)})}};
}

json completion_body(const ResponseMeta& m, const std::string& text, const std::vector<int32_t>* ids,
                     const std::string& finish_reason, int prompt_tokens, int completion_tokens, const json& logprobs) {
  json c = {{"index", 0}};
  if (m.chat)
    c["message"] = {{"role", "assistant"}, {"content", text}};
  else
    c["text"] = text;
  if (ids) c["token_ids"] = *ids;
  c["logprobs"] = logprobs;
  c["finish_reason"] = finish_reason;
  json j = envelope(m, m.chat ? "chat.completion" : "text_completion", std::move(c));
  j["usage"] = usage_json(prompt_tokens, completion_tokens);
  return j;
}

json chunk_body(const ResponseMeta& m, const std::string& text, const std::vector<int32_t>* ids,
                const std::string& finish_reason, bool role, const json& logprobs) {
  json c = {{"index", 0}};
  if (m.chat) {
    json delta = json::object();
    if (role) delta["role"] = "assistant";
    if (role || finish_reason.empty()) delta["content"] = text;
    c["delta"] = std::move(delta);
  } else {
    c["text"] = text;
  }
  if (ids) c["token_ids"] = *ids;
  c["logprobs"] = logprobs;
  c["finish_reason"] = finish_reason.empty() ? json(nullptr) : json(finish_reason);
  return envelope(m, m.chat ? "chat.completion.chunk" : "text_completion", std::move(c));
}

namespace {

// The bytes a token stands for, or nullopt when there is no tokenizer or the id has no piece (a
// model vocabulary padded beyond the tokenizer's).
std::optional<std::string> token_bytes(const Tokenizer* tok, int32_t id) {
  if (!tok || id < 0 || id >= tok->vocab_size()) return std::nullopt;
  return tok->decode_piece(id);
}

std::string token_text(const Tokenizer* tok, int32_t id) {
  auto b = token_bytes(tok, id);
  if (!b) return fmt::format("token_id:{}", id);
  if (is_valid_utf8(*b)) return *b;
  std::string s = "bytes:";
  for (unsigned char c : *b) s += fmt::format("\\x{:02x}", c);
  return s;
}

json bytes_json(const Tokenizer* tok, int32_t id) {
  auto b = token_bytes(tok, id);
  if (!b) return nullptr;
  json a = json::array();
  for (unsigned char c : *b) a.push_back(int(c));
  return a;
}

}  // namespace

json logprobs_json(bool chat, const Tokenizer* tok, const std::vector<ShownLogprob>& lps) {
  if (chat) {
    json content = json::array();
    for (const auto& s : lps) {
      json top = json::array();
      for (const auto& t : s.lp.top)
        top.push_back({{"token", token_text(tok, t.token)}, {"logprob", t.logprob}, {"bytes", bytes_json(tok, t.token)}});
      content.push_back({{"token", token_text(tok, s.lp.token)},
                         {"logprob", s.lp.logprob},
                         {"bytes", bytes_json(tok, s.lp.token)},
                         {"top_logprobs", std::move(top)}});
    }
    return {{"content", std::move(content)}};
  }
  json tokens = json::array(), logprobs = json::array(), tops = json::array(), offsets = json::array();
  for (const auto& s : lps) {
    tokens.push_back(token_text(tok, s.lp.token));
    offsets.push_back(s.text_offset);
    if (!s.lp.scored) {
      logprobs.push_back(nullptr);
      tops.push_back(nullptr);
      continue;
    }
    logprobs.push_back(s.lp.logprob);
    // The alternatives and the chosen token, as OpenAI lists them; two tokens with the same text
    // share a key, which keeps the likelier one.
    json top = json::object();
    for (const auto& t : s.lp.top) top.emplace(token_text(tok, t.token), t.logprob);
    top.emplace(token_text(tok, s.lp.token), s.lp.logprob);
    tops.push_back(std::move(top));
  }
  return {{"tokens", std::move(tokens)}, {"token_logprobs", std::move(logprobs)}, {"top_logprobs", std::move(tops)},
          {"text_offset", std::move(offsets)}};
}

}  // namespace sky
