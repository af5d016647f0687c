#include "io/chat_template.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <iterator>

#include "core/error.h"
#include "io/gguf_reader.h"
#include "io/json_input.h"
#include "io/tokenizer.h"

namespace sky {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr size_t kMaxTemplateBytes = size_t(4) << 20;  // real templates are a few KiB

std::string read_template_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail("cannot read {}: {}", path, std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail("cannot read {}: not a regular file", path);
  if (size_t(st.st_size) > kMaxTemplateBytes) fail("{}: {} bytes is too large for a chat template", path, st.st_size);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}: {}", path, std::strerror(errno));
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A special token in tokenizer_config.json: "<s>", {"content": "<s>", ...} (AddedToken), or null.
std::optional<std::string> token_field(const json& cfg, const char* key, const std::string& path) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) return (*it)["content"].get<std::string>();
  fail("{}: {} must be a string or an object with a string \"content\"", path, key);
}

std::vector<std::pair<std::string, int32_t>> added_tokens(const json& cfg, const std::string& path) {
  std::vector<std::pair<std::string, int32_t>> out;
  auto it = cfg.find("added_tokens_decoder");
  if (it == cfg.end() || it->is_null()) return out;
  if (!it->is_object()) fail("{}: added_tokens_decoder must be an object of id -> token", path);
  for (auto e = it->begin(); e != it->end(); ++e) {
    const std::string& key = e.key();
    char* end = nullptr;
    errno = 0;
    const long id = std::strtol(key.c_str(), &end, 10);
    if (key.empty() || *end || errno || id < 0 || id > INT32_MAX)
      fail("{}: added_tokens_decoder: '{}' is not a token id", path, key);
    if (!e->is_object() || !e->contains("content") || !(*e)["content"].is_string())
      fail("{}: added_tokens_decoder[\"{}\"] needs a string \"content\"", path, key);
    out.emplace_back((*e)["content"].get<std::string>(), int32_t(id));
  }
  return out;
}

std::string template_from_config(const json& cfg, const std::string& path) {
  const json& t = cfg["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (!t.is_array()) fail("{}: chat_template must be a string or a list of {{\"name\", \"template\"}}", path);
  std::vector<std::string> names;
  for (const auto& e : t) {
    if (!e.is_object() || !e.contains("name") || !e["name"].is_string() || !e.contains("template") ||
        !e["template"].is_string())
      fail("{}: each chat_template entry must be {{\"name\": string, \"template\": string}}", path);
    if (e["name"] == "default") return e["template"].get<std::string>();
    names.push_back(e["name"].get<std::string>());
  }
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "'" : ", '") + n + "'";
  fail("{}: chat_template lists templates ({}) but none named 'default'", path, list.empty() ? "none" : list);
}

std::string trim_ws(const std::string& s) {
  const char* ws = " \t\r\n\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

}  // namespace

// A GGUF file's tokenizer.chat_template, with its special tokens from tokenizer.ggml.* (bos/eos/
// unk/pad by id; control and user-defined tokens as the added tokens).
static std::optional<ChatTemplate> from_gguf(const std::string& path) {
  const gguf::File f = gguf::File::open(path);
  if (!f.has("tokenizer.chat_template")) return std::nullopt;
  const std::string& source = f.get_string("tokenizer.chat_template");
  ChatTokens tokens;
  if (f.has("tokenizer.ggml.tokens")) {
    const std::vector<std::string>& pieces = f.get_strings("tokenizer.ggml.tokens");
    auto piece = [&](const char* key) -> std::optional<std::string> {
      if (!f.has(key)) return std::nullopt;
      const int64_t id = f.get_int(key);
      if (id < 0 || uint64_t(id) >= pieces.size()) fail("{}: metadata '{}' = {} is not a token id", path, key, id);
      return pieces[size_t(id)];
    };
    tokens.bos = piece("tokenizer.ggml.bos_token_id");
    tokens.eos = piece("tokenizer.ggml.eos_token_id");
    tokens.unk = piece("tokenizer.ggml.unknown_token_id");
    tokens.pad = piece("tokenizer.ggml.padding_token_id");
    if (f.has("tokenizer.ggml.token_type")) {
      const std::vector<int64_t> types = f.get_ints("tokenizer.ggml.token_type");
      for (size_t i = 0; i < types.size() && i < pieces.size(); i++)
        if (types[i] == 3 || types[i] == 4) tokens.added.emplace_back(pieces[i], int32_t(i));
    }
  }
  return ChatTemplate(source, path + " tokenizer.chat_template", std::move(tokens));
}

std::optional<ChatTemplate> ChatTemplate::from_model_dir(const std::string& dir) {
  if (gguf::File::is_gguf(dir)) return from_gguf(dir);
  const fs::path d(dir);
  const std::string cfg_path = (d / "tokenizer_config.json").string();
  const std::string jinja_path = (d / "chat_template.jinja").string();
  json cfg = json::object();
  if (fs::exists(cfg_path)) {
    cfg = read_json_file(cfg_path);
    if (!cfg.is_object()) fail("{}: expected a JSON object", cfg_path);
  }
  std::string source, origin;
  if (fs::exists(jinja_path)) {
    source = read_template_file(jinja_path);
    origin = jinja_path;
  } else if (cfg.contains("chat_template") && !cfg["chat_template"].is_null()) {
    source = template_from_config(cfg, cfg_path);
    origin = cfg_path + " chat_template";
  } else {
    return std::nullopt;
  }
  // Older directories keep the special tokens in special_tokens_map.json only.
  json map = json::object();
  const std::string map_path = (d / "special_tokens_map.json").string();
  if (fs::exists(map_path)) {
    map = read_json_file(map_path);
    if (!map.is_object()) fail("{}: expected a JSON object", map_path);
  }
  ChatTokens tokens;
  std::optional<std::string>* fields[] = {&tokens.bos, &tokens.eos, &tokens.unk, &tokens.pad};
  const char* keys[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
  for (int k = 0; k < 4; k++) {
    *fields[k] = token_field(cfg, keys[k], cfg_path);
    if (!*fields[k]) *fields[k] = token_field(map, keys[k], map_path);
  }
  tokens.added = added_tokens(cfg, cfg_path);
  return ChatTemplate(source, origin, std::move(tokens));
}

ChatTemplate::ChatTemplate(std::string_view source, std::string origin, ChatTokens tokens)
    : source_(source), tpl_(source, std::move(origin)), tokens_(std::move(tokens)) {
  // The end of an assistant turn: what the template writes right after the content of a reply.
  const std::string mark = "skymoe0reply0probe0mark";
  try {
    const json probe = json::array({{{"role", "user"}, {"content", "Hello."}}, {{"role", "assistant"}, {"content", mark}}});
    const std::string out = render(probe, false);
    const size_t at = out.rfind(mark);
    if (at != std::string::npos) {
      const std::string after = trim_ws(out.substr(at + mark.size()));
      if (!after.empty()) stops_.push_back(after);
    }
  } catch (const Error&) {
    // A template that refuses this conversation still has its eos token below.
  }
  if (tokens_.eos && !tokens_.eos->empty() && std::find(stops_.begin(), stops_.end(), *tokens_.eos) == stops_.end())
    stops_.push_back(*tokens_.eos);
}

template <class J>
std::string ChatTemplate::render_json(const J& messages, bool add_generation_prompt, const J& extra) const {
  if (!messages.is_array()) fail("chat messages must be a JSON array, not {}", messages.type_name());
  if (!extra.is_null() && !extra.is_object()) fail("extra chat template variables must be a JSON object");
  jinja::Items vars;
  try {
    vars.emplace_back("messages", jinja::from_json(messages));
  } catch (const jinja::Problem& p) {  // nesting beyond the engine's bound
    fail("chat messages: {}", p.what());
  }
  vars.emplace_back("add_generation_prompt", jinja::Value::boolean(add_generation_prompt));
  vars.emplace_back("tools", jinja::Value::none());
  vars.emplace_back("documents", jinja::Value::none());
  const std::pair<const char*, const std::optional<std::string>*> toks[] = {
      {"bos_token", &tokens_.bos}, {"eos_token", &tokens_.eos}, {"unk_token", &tokens_.unk}, {"pad_token", &tokens_.pad}};
  for (const auto& [name, value] : toks)
    if (*value) vars.emplace_back(name, jinja::Value::string(**value));
  if (extra.is_object())
    for (auto it = extra.begin(); it != extra.end(); ++it) {
      jinja::Value v;
      try {
        v = jinja::from_json(it.value());
      } catch (const jinja::Problem& p) {
        fail("chat template variable '{}': {}", it.key(), p.what());
      }
      auto same = std::find_if(vars.begin(), vars.end(), [&](const auto& kv) { return kv.first == it.key(); });
      if (same != vars.end())
        same->second = std::move(v);
      else
        vars.emplace_back(it.key(), std::move(v));
    }
  return tpl_.render(vars);
}

std::string ChatTemplate::render(const json& messages, bool add_generation_prompt, const json& extra) const {
  return render_json(messages, add_generation_prompt, extra);
}

std::string ChatTemplate::render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                                 const nlohmann::ordered_json& extra) const {
  return render_json(messages, add_generation_prompt, extra);
}

std::vector<std::pair<std::string, int32_t>> ChatTemplate::specials(const Tokenizer& tok) const {
  auto out = tokens_.added;
  for (int id : {tok.bos_id(), tok.eos_id()}) {
    if (id < 0) continue;
    const std::string& piece = tok.id_to_piece(id);
    if (!piece.empty() && std::none_of(out.begin(), out.end(), [&](const auto& s) { return s.first == piece; }))
      out.emplace_back(piece, id);
  }
  out.erase(std::remove_if(out.begin(), out.end(), [](const auto& s) { return s.first.empty(); }), out.end());
  // Longest first, so "<|im_start|>" wins over a shorter token that is its prefix.
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  return out;
}

// Walks `text` in order: plain(run) for each run of ordinary text, special(id) for each special
// token, longest match first.
static void scan(const std::vector<std::pair<std::string, int32_t>>& sp, std::string_view text,
                 const std::function<void(std::string_view)>& plain, const std::function<void(int32_t)>& special) {
  bool first_byte[256] = {};  // most positions start no special token; skip them quickly
  for (const auto& s : sp) first_byte[uint8_t(s.first[0])] = true;
  size_t from = 0;  // start of the text not yet handed out
  for (size_t i = 0; i < text.size();) {
    const std::pair<std::string, int32_t>* hit = nullptr;
    if (first_byte[uint8_t(text[i])])
      for (const auto& s : sp)
        if (text.compare(i, s.first.size(), s.first) == 0) {
          hit = &s;
          break;
        }
    if (!hit) {
      i++;
      continue;
    }
    if (i > from) plain(text.substr(from, i - from));
    special(hit->second);
    i += hit->first.size();
    from = i;
  }
  if (text.size() > from) plain(text.substr(from));
}

std::vector<int32_t> ChatTemplate::encode(const Tokenizer& tok, std::string_view text) const {
  std::vector<int32_t> ids;
  scan(
      specials(tok), text,
      [&](std::string_view run) {
        auto part = tok.encode(run);
        ids.insert(ids.end(), part.begin(), part.end());
      },
      [&](int32_t id) { ids.push_back(id); });
  return ids;
}

int64_t ChatTemplate::min_tokens(const Tokenizer& tok, std::string_view text) const {
  int64_t n = 0;
  scan(
      specials(tok), text, [&](std::string_view run) { n += tok.min_tokens(run); }, [&](int32_t) { n++; });
  return n;
}

std::vector<int32_t> ChatTemplate::stop_token_ids(const Tokenizer& tok) const {
  std::vector<int32_t> ids;
  const auto sp = specials(tok);
  for (const auto& stop : stops_)
    for (const auto& s : sp)
      if (s.first == stop && std::find(ids.begin(), ids.end(), s.second) == ids.end()) ids.push_back(s.second);
  return ids;
}

}  // namespace sky
