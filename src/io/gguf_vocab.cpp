#include "io/gguf_vocab.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace sky {

using json = nlohmann::json;

namespace {

// The regexes as the models' tokenizer.json files spell them (llama.cpp's src/llama-vocab.cpp keeps
// adapted copies under these names).
const std::vector<BpePreTokenizer>& table() {
  static const std::string kQwen2 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  static const std::string kLlama3 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  // DeepSeek-V3 (and R1): digits in threes, runs of CJK ideographs and kana, then the rest.
  static const std::vector<std::string> kDeepSeekV3 = {
      R"(\p{N}{1,3})", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
      R"([!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"};
  static const std::vector<BpePreTokenizer> t = {
      {"gpt-2", {}, false},
      {"qwen2", {kQwen2}, false},
      {"llama-bpe", {kLlama3}, true},
      {"deepseek-v3", kDeepSeekV3, false},
  };
  return t;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SKY_CHECK(in, "cannot read {}", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The regexes of a byte-level pre-tokenizer (see BpePreTokenizer::regexes), or a sky::Error naming
// the component that is not one.
std::vector<std::string> byte_level_regexes(const json& pre, const std::string& path) {
  auto is_byte_level = [](const json& p, bool with_regex) {
    return p.is_object() && p.value("type", "") == "ByteLevel" && p.value("use_regex", true) == with_regex;
  };
  if (is_byte_level(pre, true)) return {};
  std::vector<std::string> out;
  if (pre.is_object() && pre.value("type", "") == "Sequence" && pre.contains("pretokenizers") &&
      pre["pretokenizers"].is_array() && !pre["pretokenizers"].empty() && is_byte_level(pre["pretokenizers"].back(), false)) {
    const json& ps = pre["pretokenizers"];
    for (size_t i = 0; i + 1 < ps.size(); i++) {
      const json& s = ps[i];
      const bool split = s.is_object() && s.value("type", "") == "Split" && s.value("behavior", "") == "Isolated" &&
                         !s.value("invert", false) && s.contains("pattern") && s["pattern"].is_object() &&
                         s["pattern"].contains("Regex") && s["pattern"]["Regex"].is_string();
      SKY_CHECK(split,
                "GGUF export: tokenizer {} pre-tokenizer {} is not a Split by a regex (Isolated); llama.cpp's byte-level "
                "vocabularies name their pre-tokenizer regexes only",
                path, s.dump());
      out.push_back(s["pattern"]["Regex"].get<std::string>());
    }
    return out;
  }
  fail("GGUF export: tokenizer {} is not a byte-level BPE (pre_tokenizer {}): llama.cpp's 'gpt2' vocabulary needs "
       "ByteLevel pre-tokenization. A SentencePiece-style tokenizer.json (Metaspace, byte fallback, as Mixtral's) "
       "cannot be written exactly; pass --tokenizer the model's SentencePiece tokenizer.model instead",
       path, pre.dump().substr(0, 200));
}

// Whether the tokenizer adds a bos token to a text: tokenizer_config.json says so (add_bos_token),
// else the post-processor's template for a single sequence starts with a special token.
bool adds_bos(const json& j, const json& cfg) {
  if (cfg.is_object() && cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean())
    return cfg["add_bos_token"].get<bool>();
  const json* post = j.contains("post_processor") ? &j["post_processor"] : nullptr;
  auto template_starts_special = [](const json& p) {
    return p.is_object() && p.value("type", "") == "TemplateProcessing" && p.contains("single") &&
           p["single"].is_array() && !p["single"].empty() && p["single"][0].contains("SpecialToken");
  };
  if (!post || !post->is_object()) return false;
  if (template_starts_special(*post)) return true;
  if (post->value("type", "") == "Sequence" && post->contains("processors") && (*post)["processors"].is_array())
    for (const json& p : (*post)["processors"])
      if (template_starts_special(p)) return true;
  return false;
}

}  // namespace

const BpePreTokenizer* bpe_pre_by_name(const std::string& name) {
  std::string n = name;
  if (n == "default" || n == "gpt2" || n == "olmo") n = "gpt-2";  // the same regex in llama.cpp
  if (n == "llama3" || n == "llama-v3") n = "llama-bpe";
  for (const BpePreTokenizer& p : table())
    if (n == p.name) return &p;
  return nullptr;
}

std::string bpe_pre_names() {
  std::string s = "default, gpt2, olmo";
  for (const BpePreTokenizer& p : table()) s += std::string(", ") + p.name;
  return s + ", llama3, llama-v3";
}

GgufBpeVocab read_bpe_vocab(const std::string& path, int vocab_size) {
  json j;
  try {
    j = json::parse(slurp(path));
  } catch (const json::exception& e) {
    fail("GGUF export: tokenizer {} is not valid JSON: {}", path, e.what());
  }
  SKY_CHECK(j.is_object() && j.contains("model") && j["model"].is_object() && j["model"].value("type", "BPE") == "BPE",
            "GGUF export: tokenizer {} has no BPE model; llama.cpp's 'gpt2' vocabulary is byte-level BPE", path);
  const json& model = j["model"];
  SKY_CHECK(!model.value("byte_fallback", false),
            "GGUF export: tokenizer {} uses byte_fallback (SentencePiece-style BPE), which llama.cpp's 'gpt2' "
            "vocabulary cannot express; pass --tokenizer the model's SentencePiece tokenizer.model instead",
            path);
  // llama.cpp runs no normalizer for these vocabularies; NFC is what Qwen2's converter drops too
  // (text is NFC in practice), anything else would change the ids.
  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    const json& n = j["normalizer"];
    const bool empty_seq = n.value("type", "") == "Sequence" && n.contains("normalizers") && n["normalizers"].empty();
    SKY_CHECK(empty_seq || n.value("type", "") == "NFC",
              "GGUF export: tokenizer {} has normalizer {}, which llama.cpp's byte-level vocabularies do not run",
              path, n.dump().substr(0, 200));
  }
  GgufBpeVocab v;
  const std::vector<std::string> regexes = byte_level_regexes(j.value("pre_tokenizer", json()), path);
  const BpePreTokenizer* pre = nullptr;
  for (const BpePreTokenizer& p : table())
    if (p.regexes == regexes) pre = &p;
  if (!pre) {
    std::string shown;
    for (const std::string& r : regexes) shown += (shown.empty() ? "'" : "', '") + r;
    fail("GGUF export: tokenizer {} pre-tokenizes with the regex(es) {}', which no llama.cpp pre-tokenizer name "
         "skymoe knows stands for (known: {}); llama.cpp would split the text differently",
         path, regexes.empty() ? "(none)'" : shown, bpe_pre_names());
  }
  SKY_CHECK(model.value("ignore_merges", false) == pre->ignore_merges,
            "GGUF export: tokenizer {} has ignore_merges {}, but llama.cpp's '{}' pre-tokenizer runs with {}", path,
            model.value("ignore_merges", false), pre->name, pre->ignore_merges);
  v.pre = pre->name;

  v.tokens.assign(size_t(vocab_size), "");
  v.types.assign(size_t(vocab_size), 1);
  std::vector<bool> named(size_t(vocab_size), false);
  auto place = [&](const std::string& t, int64_t id, int32_t type) {
    SKY_CHECK(id >= 0 && id < vocab_size, "GGUF export: tokenizer {} has token '{}' with id {}, outside the model's "
              "vocabulary of {}", path, t, id, vocab_size);
    v.tokens[size_t(id)] = t;
    v.types[size_t(id)] = type;
    named[size_t(id)] = true;
  };
  SKY_CHECK(model.contains("vocab") && model["vocab"].is_object(), "GGUF export: tokenizer {} has no model.vocab", path);
  for (const auto& it : model["vocab"].items()) place(it.key(), it.value().get<int64_t>(), 1);
  if (j.contains("added_tokens") && j["added_tokens"].is_array())
    for (const json& a : j["added_tokens"]) place(a["content"].get<std::string>(), a["id"].get<int64_t>(), a.value("special", false) ? 3 : 4);
  for (int i = 0; i < vocab_size; i++)
    if (!named[size_t(i)]) {
      // Embedding rows no token names, as convert_hf_to_gguf.py pads them.
      v.tokens[size_t(i)] = fmt::format("[PAD{}]", i);
      v.types[size_t(i)] = 5;
      v.unused++;
    }
  if (model.contains("merges"))
    for (const json& m : model["merges"]) {
      if (m.is_string()) v.merges.push_back(m.get<std::string>());
      else if (m.is_array() && m.size() == 2) v.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
      else fail("GGUF export: tokenizer {} has a merge {} that is neither \"a b\" nor [a, b]", path, m.dump());
    }

  json cfg;
  const std::string cfg_path = (std::filesystem::path(path).parent_path() / "tokenizer_config.json").string();
  if (std::filesystem::exists(cfg_path)) {
    try {
      cfg = json::parse(slurp(cfg_path));
    } catch (const json::exception& e) {
      fail("{}: not valid JSON: {}", cfg_path, e.what());
    }
  }
  v.add_bos = adds_bos(j, cfg);
  return v;
}

}  // namespace sky
