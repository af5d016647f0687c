#include "io/hf_tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "io/byte_level.h"
#include "io/pcre_regex.h"
#include "io/unicode_norm.h"
#include "io/utf8.h"

namespace sky {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const std::string kMetaspace = "\xe2\x96\x81";  // "▁"
// The regex ByteLevel splits with when its use_regex is on (GPT-2's).
const char* const kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Lets an unordered_map keyed by std::string be searched with a string_view, without a copy.
struct SvHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using PieceMap = std::unordered_map<std::string, int32_t, SvHash, std::equal_to<>>;

// Reads tokenizer.json values with errors that name the file, the place in it and what was wrong.
class JsonReader {
 public:
  explicit JsonReader(std::string file) : file_(std::move(file)) {}
  const std::string& file() const { return file_; }

  template <class... A>
  [[noreturn]] void bad(const std::string& where, fmt::format_string<A...> f, A&&... a) const {
    fail("tokenizer {}: {}: {}", file_, where, fmt::format(f, std::forward<A>(a)...));
  }
  const json& object(const json& j, const std::string& where) const {
    if (!j.is_object()) bad(where, "expected an object, got {}", j.type_name());
    return j;
  }
  const json* opt(const json& j, const char* key) const {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  }
  const json& req(const json& j, const char* key, const std::string& where) const {
    const json* v = opt(j, key);
    if (!v) bad(where, "'{}' is missing", key);
    return *v;
  }
  std::string str(const json& j, const char* key, const std::string& where) const {
    const json& v = req(j, key, where);
    if (!v.is_string()) bad(where, "'{}' must be a string, got {}", key, v.type_name());
    return v.get<std::string>();
  }
  std::string str_or(const json& j, const char* key, const std::string& def, const std::string& where) const {
    return opt(j, key) ? str(j, key, where) : def;
  }
  bool flag(const json& j, const char* key, bool def, const std::string& where) const {
    const json* v = opt(j, key);
    if (!v) return def;
    if (!v->is_boolean()) bad(where, "'{}' must be true or false, got {}", key, v->type_name());
    return v->get<bool>();
  }
  int64_t integer(const json& j, const char* key, const std::string& where) const {
    const json& v = req(j, key, where);
    if (!v.is_number_integer()) bad(where, "'{}' must be an integer, got {}", key, v.type_name());
    return v.get<int64_t>();
  }
  const json& array(const json& j, const char* key, const std::string& where) const {
    const json& v = req(j, key, where);
    if (!v.is_array()) bad(where, "'{}' must be an array, got {}", key, v.type_name());
    return v;
  }
  // A component's "type", e.g. "BPE" or "Split".
  std::string type(const json& j, const std::string& where) const {
    object(j, where);
    return str(j, "type", where);
  }

 private:
  std::string file_;
};

// How a Split cuts a string at the pattern's matches (the library's SplitDelimiterBehavior).
enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
enum class PrependScheme { Always, First, Never };

struct Range {
  size_t b, e;
  bool match;
};

// The pieces a split keeps, from the ranges that cover the whole string (matches and the gaps
// between them), as the library combines them for each behavior.
void apply_behavior(Behavior bh, std::vector<Range>& r) {
  std::vector<Range> out;
  switch (bh) {
    case Behavior::Isolated:
      return;
    case Behavior::Removed:
      r.erase(std::remove_if(r.begin(), r.end(), [](const Range& x) { return x.match; }), r.end());
      return;
    case Behavior::Contiguous: {  // runs of matches, and runs of non-matches, become one piece each
      bool prev = false;
      for (const Range& x : r) {
        if (!out.empty() && x.match == prev) out.back().e = x.e;
        else out.push_back(x);
        prev = x.match;
      }
      break;
    }
    case Behavior::MergedWithPrevious: {  // a match joins the piece before it
      bool prev = false;
      for (const Range& x : r) {
        if (x.match && !prev && !out.empty()) out.back().e = x.e;
        else out.push_back(x);
        prev = x.match;
      }
      break;
    }
    case Behavior::MergedWithNext: {  // a match joins the piece after it
      bool prev = false;
      for (auto it = r.rbegin(); it != r.rend(); ++it) {
        if (it->match && !prev && !out.empty()) out.back().b = it->b;
        else out.push_back(*it);
        prev = it->match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  r.swap(out);
}

// A literal string or a regex (Split, Replace), as tokenizer.json writes {"String": ...} or
// {"Regex": ...}.
struct Pattern {
  std::string literal;
  int regex = -1;  // index into Impl::regexes
};

struct NormStep {
  enum Kind { Unicode, Prepend, Replace } kind;
  explicit NormStep(Kind k) : kind(k) {}
  NormalForm form = NormalForm::NFC;
  std::string text;  // Prepend: what goes in front; Replace: the replacement
  Pattern pattern;   // Replace
};

struct PreStep {
  enum Kind { Split, ByteLevel, Metaspace } kind;
  explicit PreStep(Kind k) : kind(k) {}
  // Split (and Digits, and ByteLevel's own regex when use_regex; -1: none).
  int regex = -1;
  std::string literal;  // Split with a String pattern
  Behavior behavior = Behavior::Isolated;
  bool invert = false;
  bool add_prefix_space = false;  // ByteLevel
  std::string replacement;        // Metaspace
  PrependScheme prepend = PrependScheme::Always;
  bool split = true;
};

struct DecStep {
  enum Kind { ByteLevel, Replace, ByteFallback, Metaspace, Strip } kind;
  explicit DecStep(Kind k) : kind(k) {}
  Pattern pattern;  // Replace
  std::string text;  // Replace: the replacement; Metaspace: the replacement character; Strip: its character
  int start = 0, stop = 0;
};

struct AddedToken {
  std::string content;
  std::string match;  // what is searched for: the content, normalized when `normalized`
  int32_t id = -1;
  bool special = false, normalized = false, lstrip = false, rstrip = false, single_word = false;
};

// The Unicode White_Space characters just before `pos`: where that run starts.
size_t white_space_start_before(std::string_view s, size_t pos) {
  while (pos > 0) {
    size_t p = pos - 1;
    while (p > 0 && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) p--;
    char32_t cp;
    if (!utf8::decode(s, p, &cp) || !utf8::is_white_space(cp)) break;
    pos = p;
  }
  return pos;
}

size_t white_space_end_after(std::string_view s, size_t pos) {
  char32_t cp;
  while (pos < s.size()) {
    size_t n = utf8::decode(s, pos, &cp);
    if (!n || !utf8::is_white_space(cp)) break;
    pos += n;
  }
  return pos;
}

bool word_char_before(std::string_view s, size_t pos) {
  if (pos == 0) return false;
  size_t p = pos - 1;
  while (p > 0 && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) p--;
  char32_t cp;
  return utf8::decode(s, p, &cp) && unicode_is_word(cp);
}

bool word_char_at(std::string_view s, size_t pos) {
  char32_t cp;
  return pos < s.size() && utf8::decode(s, pos, &cp) && unicode_is_word(cp);
}

// Finds added tokens in text: leftmost match first, the longest one where several start at the same
// place (as the library's Aho-Corasick automaton does). Models carry a few to a few thousand such
// tokens, nearly all starting with one of a handful of bytes ('<', '[', '▁'), so candidates are
// bucketed by first byte and compared directly.
class AddedMatcher {
 public:
  void build(std::vector<const AddedToken*> toks) {
    std::stable_sort(toks.begin(), toks.end(),
                     [](const AddedToken* a, const AddedToken* b) { return a->match.size() > b->match.size(); });
    toks_ = std::move(toks);
    for (auto& b : by_first_) b.clear();
    for (uint32_t k = 0; k < toks_.size(); k++) by_first_[static_cast<unsigned char>(toks_[k]->match[0])].push_back(k);
  }
  bool empty() const { return toks_.empty(); }

  // Calls text(b, e) for each stretch of s between tokens and token(id) for each token, in order.
  template <class Text, class Token>
  void split(std::string_view s, Text&& text, Token&& token) const {
    size_t done = 0, pos = 0;
    while (!toks_.empty() && pos < s.size()) {
      const AddedToken* hit = nullptr;
      size_t i = pos;
      for (; i < s.size() && !hit; i++) {
        for (uint32_t k : by_first_[static_cast<unsigned char>(s[i])]) {
          const std::string& m = toks_[k]->match;
          if (s.size() - i >= m.size() && std::memcmp(s.data() + i, m.data(), m.size()) == 0) {
            hit = toks_[k];
            break;
          }
        }
      }
      if (!hit) break;
      size_t b = i - 1, e = b + hit->match.size();
      pos = e;
      // A single_word token must not touch a word character on either side.
      if (hit->single_word && (word_char_before(s, b) || word_char_at(s, e))) continue;
      // lstrip/rstrip: the token takes the white space beside it.
      if (hit->lstrip) b = std::max(white_space_start_before(s, b), done);
      if (hit->rstrip) pos = e = white_space_end_after(s, e);
      if (done < b) text(done, b);
      token(hit->id);
      done = e;
    }
    if (done < s.size()) text(done, s.size());
  }

 private:
  std::vector<const AddedToken*> toks_;  // longest first
  std::array<std::vector<uint32_t>, 256> by_first_;
};

struct Merge {
  int32_t rank, id;
};

// The merge table, looked up for every adjacent pair of every piece: open addressing on the pair
// of ids, which is several times faster than std::unordered_map here.
class MergeTable {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    slots_.assign(cap, Slot{kEmpty, {}});
    mask_ = cap - 1;
  }
  // A pair already present takes the new value (the last of repeated merges wins, as in the library).
  void put(int32_t a, int32_t b, Merge m) {
    if (2 * (size_ + 1) > slots_.size()) grow();
    Slot& s = find_slot(key(a, b));
    if (s.key == kEmpty) size_++;
    s = Slot{key(a, b), m};
  }
  const Merge* get(int32_t a, int32_t b) const {
    const Slot& s = const_cast<MergeTable*>(this)->find_slot(key(a, b));
    return s.key == kEmpty ? nullptr : &s.m;
  }

 private:
  struct Slot {
    uint64_t key;
    Merge m;
  };
  static constexpr uint64_t kEmpty = ~uint64_t(0);  // ids are below 2^30, so no pair has this key
  static uint64_t key(int32_t a, int32_t b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); }
  Slot& find_slot(uint64_t k) {
    size_t i = size_t((k * 0x9E3779B97F4A7C15ull) >> 32) & mask_;
    while (slots_[i].key != kEmpty && slots_[i].key != k) i = (i + 1) & mask_;
    return slots_[i];
  }
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    reserve(std::max<size_t>(16, old.size()));
    size_ = 0;
    for (const Slot& s : old)
      if (s.key != kEmpty) put(int32_t(s.key >> 32), int32_t(uint32_t(s.key)), s.m);
  }
  std::vector<Slot> slots_ = std::vector<Slot>(16, Slot{kEmpty, {}});
  size_t mask_ = 15, size_ = 0;
};

// Buffers for one encode() call, reused across its pieces (so a warm call allocates little), and
// the regex match states, which must not be shared between threads.
struct Scratch {
  std::vector<std::unique_ptr<Regex::Matcher>> matchers;  // by regex index, made on first use
  std::vector<std::vector<Range>> ranges;                // by pre-tokenizer step
  std::vector<std::string> bufs;                         // by pre-tokenizer step
  std::string norm, mapped, word;
  std::vector<int32_t> syms, new_ids, ranks;             // the BPE merge of one piece
};

}  // namespace

struct HfTokenizer::Impl {
  std::string path;
  std::vector<std::unique_ptr<Regex>> regexes;
  std::vector<NormStep> norm;
  std::vector<PreStep> pre;
  std::vector<DecStep> dec;

  // The BPE model.
  PieceMap vocab;
  MergeTable merges;
  std::string unk_token;
  int32_t unk = -1;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  std::string prefix, suffix;  // continuing_subword_prefix, end_of_word_suffix
  std::array<int32_t, 256> byte_piece{};  // id of "<0xNN>", or -1
  std::array<int32_t, 256> byte_char{};   // id of the byte-level character of byte b, or -1
  PieceMap raw_vocab;  // ignore_merges after ByteLevel: the bytes each piece stands for
  // The pieces of one character (a piece's first symbols), by code point.
  std::array<int32_t, 128> ascii_piece{};
  std::unordered_map<char32_t, int32_t> char_piece;

  std::vector<AddedToken> added;
  AddedMatcher raw_added, norm_added;  // matched before / after normalization

  // Per id.
  std::vector<std::string> pieces;   // the vocabulary string
  std::vector<std::string> decoded;  // what the decoder makes of it alone
  std::vector<uint8_t> special;      // special added tokens: no text
  std::vector<Tokenizer::PieceType> types;

  int bos = -1, eos = -1, pad = -1;
  bool dummy_prefix = false;
  size_t max_piece = 0;

  // Loading.
  int add_regex(std::string_view pattern, const std::string& what) {
    regexes.push_back(std::make_unique<Regex>(pattern, fmt::format("tokenizer {}: {}", path, what)));
    return int(regexes.size() - 1);
  }
  Pattern read_pattern(const JsonReader& r, const json& j, const std::string& where);
  void read_normalizer(const JsonReader& r, const json& j, const std::string& where);
  void read_pre_tokenizer(const JsonReader& r, const json& j, const std::string& where);
  void read_decoder(const JsonReader& r, const json& j, const std::string& where, bool& joined);
  void read_model(const JsonReader& r, const json& j);
  void read_added(const JsonReader& r, const json& j);
  void finish(const std::string& dir);

  // Encoding.
  Regex::Matcher& matcher(Scratch& sc, int i) const {
    if (sc.matchers.size() < regexes.size()) sc.matchers.resize(regexes.size());
    if (!sc.matchers[i]) sc.matchers[i] = std::make_unique<Regex::Matcher>(*regexes[i]);
    return *sc.matchers[i];
  }
  void find_ranges(Scratch& sc, const Pattern& p, std::string_view s, std::vector<Range>& out) const;
  void normalize(Scratch& sc, std::string& s) const;
  void segment(Scratch& sc, std::string_view s, bool at_origin, std::vector<int32_t>& out) const;
  void pre_tokenize(Scratch& sc, size_t step, std::string_view s, bool at_origin, bool raw,
                    std::vector<int32_t>& out) const;
  void word(Scratch& sc, std::string_view s, bool raw, std::vector<int32_t>& out) const;
  void symbols(Scratch& sc, std::string_view s) const;
  void merge_all(Scratch& sc) const;
  const Merge* merge(int32_t a, int32_t b) const { return merges.get(a, b); }
  std::string decode_alone(const std::string& piece, bool special_token) const;
  size_t input_bound() const;

  void check_id(int32_t id) const {
    SKY_CHECK(id >= 0 && size_t(id) < pieces.size(), "tokenizer {}: id {} is outside the vocab of {}", path, id,
              pieces.size());
  }
};

// ---- loading ---------------------------------------------------------------------------------

Pattern HfTokenizer::Impl::read_pattern(const JsonReader& r, const json& j, const std::string& where) {
  const json& p = r.req(j, "pattern", where);
  r.object(p, where + ".pattern");
  Pattern out;
  if (const json* s = r.opt(p, "String")) {
    if (!s->is_string()) r.bad(where, "pattern String must be a string, got {}", s->type_name());
    out.literal = s->get<std::string>();
  } else if (const json* re = r.opt(p, "Regex")) {
    if (!re->is_string()) r.bad(where, "pattern Regex must be a string, got {}", re->type_name());
    out.regex = add_regex(re->get<std::string>(), where);
  } else {
    r.bad(where, "pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}");
  }
  return out;
}

void HfTokenizer::Impl::read_normalizer(const JsonReader& r, const json& j, const std::string& where) {
  const std::string type = r.type(j, where);
  const std::string at = fmt::format("{} ({})", where, type);
  if (type == "Sequence") {
    const json& list = r.array(j, "normalizers", at);
    for (size_t i = 0; i < list.size(); i++) read_normalizer(r, list[i], fmt::format("{}.normalizers[{}]", where, i));
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    NormStep s(NormStep::Unicode);
    s.form = type == "NFC" ? NormalForm::NFC : type == "NFD" ? NormalForm::NFD : type == "NFKC" ? NormalForm::NFKC
                                                                                               : NormalForm::NFKD;
    norm.push_back(std::move(s));
  } else if (type == "Prepend") {
    NormStep s(NormStep::Prepend);
    s.text = r.str(j, "prepend", at);
    norm.push_back(std::move(s));
  } else if (type == "Replace") {
    NormStep s(NormStep::Replace);
    s.pattern = read_pattern(r, j, at);
    s.text = r.str(j, "content", at);
    norm.push_back(std::move(s));
  } else {
    r.bad(where, "normalizer type '{}' is not supported (supported: NFC, NFD, NFKC, NFKD, Prepend, Replace, Sequence)",
          type);
  }
}

void HfTokenizer::Impl::read_pre_tokenizer(const JsonReader& r, const json& j, const std::string& where) {
  const std::string type = r.type(j, where);
  const std::string at = fmt::format("{} ({})", where, type);
  PreStep s(PreStep::Split);
  if (type == "Sequence") {
    const json& list = r.array(j, "pretokenizers", at);
    for (size_t i = 0; i < list.size(); i++)
      read_pre_tokenizer(r, list[i], fmt::format("{}.pretokenizers[{}]", where, i));
    return;
  } else if (type == "Split") {
    Pattern p = read_pattern(r, j, at);
    s.regex = p.regex;
    s.literal = p.literal;
    const std::string bh = r.str(j, "behavior", at);
    if (bh == "Removed") s.behavior = Behavior::Removed;
    else if (bh == "Isolated") s.behavior = Behavior::Isolated;
    else if (bh == "MergedWithPrevious") s.behavior = Behavior::MergedWithPrevious;
    else if (bh == "MergedWithNext") s.behavior = Behavior::MergedWithNext;
    else if (bh == "Contiguous") s.behavior = Behavior::Contiguous;
    else r.bad(at, "behavior '{}' is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous", bh);
    s.invert = r.flag(j, "invert", false, at);
  } else if (type == "Digits") {
    // Each digit alone, or runs of digits, cut out of the text (Rust's char::is_numeric is \p{N}).
    s.regex = add_regex(r.flag(j, "individual_digits", false, at) ? "\\p{N}" : "\\p{N}+", at);
  } else if (type == "ByteLevel") {
    s.kind = PreStep::ByteLevel;
    s.add_prefix_space = r.flag(j, "add_prefix_space", true, at);
    if (r.flag(j, "use_regex", true, at)) s.regex = add_regex(kGpt2Regex, at);
  } else if (type == "Metaspace") {
    s.kind = PreStep::Metaspace;
    s.replacement = r.str(j, "replacement", at);
    char32_t cp;
    if (s.replacement.empty() || utf8::decode(s.replacement, 0, &cp) != s.replacement.size())
      r.bad(at, "replacement must be one character, got '{}'", s.replacement);
    const std::string scheme = r.str_or(j, "prepend_scheme", "always", at);
    if (scheme == "always") s.prepend = PrependScheme::Always;
    else if (scheme == "first") s.prepend = PrependScheme::First;
    else if (scheme == "never") s.prepend = PrependScheme::Never;
    else r.bad(at, "prepend_scheme '{}' is not one of always, first, never", scheme);
    // Older files say add_prefix_space instead; false means never.
    if (!r.flag(j, "add_prefix_space", true, at)) s.prepend = PrependScheme::Never;
    s.split = r.flag(j, "split", true, at);
  } else {
    r.bad(where, "pre_tokenizer type '{}' is not supported (supported: ByteLevel, Split, Metaspace, Digits, Sequence)",
          type);
  }
  pre.push_back(std::move(s));
}

// `joined`: an earlier decoder (ByteLevel, Fuse) has already made one string of all tokens, so a
// Strip works on the whole text rather than on each token.
void HfTokenizer::Impl::read_decoder(const JsonReader& r, const json& j, const std::string& where, bool& joined) {
  const std::string type = r.type(j, where);
  const std::string at = fmt::format("{} ({})", where, type);
  if (type == "Sequence") {
    const json& list = r.array(j, "decoders", at);
    for (size_t i = 0; i < list.size(); i++) read_decoder(r, list[i], fmt::format("{}.decoders[{}]", where, i), joined);
  } else if (type == "ByteLevel") {
    dec.emplace_back(DecStep::ByteLevel);
    joined = true;
  } else if (type == "Fuse") {
    joined = true;  // joining changes nothing for per-token text
  } else if (type == "ByteFallback") {
    dec.emplace_back(DecStep::ByteFallback);
  } else if (type == "Replace") {
    DecStep s(DecStep::Replace);
    s.pattern = read_pattern(r, j, at);
    s.text = r.str(j, "content", at);
    dec.push_back(std::move(s));
  } else if (type == "Metaspace") {
    DecStep s(DecStep::Metaspace);
    s.text = r.str(j, "replacement", at);
    std::string scheme = r.str_or(j, "prepend_scheme", "always", at);
    if (!r.flag(j, "add_prefix_space", true, at)) scheme = "never";
    // The decoder drops the space the pre-tokenizer put before the first word.
    if (scheme != "never") dummy_prefix = true;
    dec.push_back(std::move(s));
  } else if (type == "Strip") {
    DecStep s(DecStep::Strip);
    s.text = r.str(j, "content", at);
    s.start = int(r.integer(j, "start", at));
    s.stop = int(r.integer(j, "stop", at));
    char32_t cp;
    if (s.text.empty() || utf8::decode(s.text, 0, &cp) != s.text.size())
      r.bad(at, "content must be one character, got '{}'", s.text);
    if (s.start < 0 || s.stop < 0) r.bad(at, "start {} and stop {} must not be negative", s.start, s.stop);
    if (!joined) {
      dec.push_back(std::move(s));  // on each token: part of that token's text
    } else {
      // On the whole text. Streaming can only take back what the first token put in front, so this
      // is Llama 2's Strip(" ", 1, 0), which removes the prepended space.
      if (s.text != " " || s.start > 1 || s.stop != 0)
        r.bad(at, "a Strip of the whole text is supported for content ' ', start 0 or 1, stop 0 (the dummy-prefix "
                  "space); got content '{}', start {}, stop {}", s.text, s.start, s.stop);
      if (s.start == 1) dummy_prefix = true;
    }
  } else {
    r.bad(where, "decoder type '{}' is not supported (supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, "
                 "Strip, Sequence)", type);
  }
}

void HfTokenizer::Impl::read_model(const JsonReader& r, const json& j) {
  r.object(j, "model");
  // Files from before the "type" key hold BPE models when they have merges.
  const std::string type = r.opt(j, "type") ? r.str(j, "type", "model") : (r.opt(j, "merges") ? "BPE" : "");
  if (type != "BPE")
    r.bad("model", "model type '{}' is not supported: skymoe reads BPE models from tokenizer.json (for a Unigram "
                   "model, use its SentencePiece tokenizer.model)", type.empty() ? "(none)" : type);
  const std::string at = "model (BPE)";
  if (const json* d = r.opt(j, "dropout")) {
    if (!d->is_number()) r.bad(at, "'dropout' must be a number, got {}", d->type_name());
    if (d->get<double>() > 0) r.bad(at, "dropout {} is not supported (it makes encoding random)", d->get<double>());
  }
  const json& v = r.req(j, "vocab", at);
  if (!v.is_object()) r.bad(at, "'vocab' must be an object of piece: id, got {}", v.type_name());
  int64_t max_id = -1;
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() >= (1 << 30))
      r.bad(at, "vocab id of '{}' must be an integer in [0, 2^30), got {}", it.key(), it.value().dump());
    const int64_t id = it.value().get<int64_t>();
    vocab[it.key()] = int32_t(id);
    max_id = std::max(max_id, id);
  }
  pieces.assign(size_t(max_id + 1), std::string());
  for (const auto& [piece, id] : vocab) pieces[size_t(id)] = piece;

  unk_token = r.str_or(j, "unk_token", "", at);
  if (!unk_token.empty())
    if (auto it = vocab.find(unk_token); it != vocab.end()) unk = it->second;
  fuse_unk = r.flag(j, "fuse_unk", false, at);
  byte_fallback = r.flag(j, "byte_fallback", false, at);
  ignore_merges = r.flag(j, "ignore_merges", false, at);
  prefix = r.str_or(j, "continuing_subword_prefix", "", at);
  suffix = r.str_or(j, "end_of_word_suffix", "", at);

  const json& m = r.array(j, "merges", at);
  auto lookup = [&](const std::string& piece, size_t i) {
    auto it = vocab.find(piece);
    if (it == vocab.end()) r.bad(at, "merge {} uses '{}', which is not in the vocab", i, piece);
    return it->second;
  };
  merges.reserve(m.size());
  for (size_t i = 0; i < m.size(); i++) {
    std::string a, b;
    if (m[i].is_string()) {  // "a b", the older form
      const std::string& line = m[i].get_ref<const std::string&>();
      size_t sp = line.find(' ');
      if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
        r.bad(at, "merge {} '{}' must be two pieces separated by one space", i, line);
      a = line.substr(0, sp);
      b = line.substr(sp + 1);
    } else if (m[i].is_array() && m[i].size() == 2 && m[i][0].is_string() && m[i][1].is_string()) {
      a = m[i][0].get<std::string>();
      b = m[i][1].get<std::string>();
    } else {
      r.bad(at, "merge {} must be a string \"a b\" or a pair [\"a\", \"b\"], got {}", i, m[i].dump());
    }
    // The merged piece drops the right side's continuing-subword prefix.
    std::string joined = a + (!prefix.empty() && b.starts_with(prefix) ? b.substr(prefix.size()) : b);
    auto it = vocab.find(joined);
    if (it == vocab.end()) r.bad(at, "merge {} ('{}' + '{}') makes '{}', which is not in the vocab", i, a, b, joined);
    // A repeated pair keeps its last rank, as in the library.
    merges.put(lookup(a, i), lookup(b, i), Merge{int32_t(i), it->second});
  }

  ascii_piece.fill(-1);
  for (const auto& [piece, id] : vocab) {
    char32_t cp;
    if (!piece.empty() && utf8::decode(piece, 0, &cp) == piece.size()) {
      if (cp < 0x80) ascii_piece[cp] = id;
      else char_piece[cp] = id;
    }
  }
  for (int b = 0; b < 256; b++) {
    auto it = vocab.find(fmt::format("<0x{:02X}>", b));
    byte_piece[b] = it == vocab.end() ? -1 : it->second;
    auto jt = vocab.find(byte_level::utf8_of(uint8_t(b)));
    byte_char[b] = jt == vocab.end() ? -1 : jt->second;
  }
}

void HfTokenizer::Impl::read_added(const JsonReader& r, const json& list) {
  if (!list.is_array()) r.bad("added_tokens", "must be an array, got {}", list.type_name());
  for (size_t i = 0; i < list.size(); i++) {
    const std::string at = fmt::format("added_tokens[{}]", i);
    r.object(list[i], at);
    AddedToken t;
    t.content = r.str(list[i], "content", at);
    int64_t id = r.integer(list[i], "id", at);
    if (id < 0 || id >= (1 << 30)) r.bad(at, "id {} is outside [0, 2^30)", id);
    t.special = r.flag(list[i], "special", false, at);
    t.normalized = r.flag(list[i], "normalized", !t.special, at);
    t.lstrip = r.flag(list[i], "lstrip", false, at);
    t.rstrip = r.flag(list[i], "rstrip", false, at);
    t.single_word = r.flag(list[i], "single_word", false, at);
    if (t.content.empty()) continue;  // the library ignores these
    // A token the model already has keeps the model's id, as in the library.
    auto it = vocab.find(t.content);
    t.id = it != vocab.end() ? it->second : int32_t(id);
    added.push_back(std::move(t));
  }
}

// Text in the normalizers' hands has no added tokens left, so the added tokens' own normalized
// forms (what `normalized` tokens are searched for) need the normalizers alone.
void HfTokenizer::Impl::finish(const std::string& dir) {
  Scratch sc;
  std::vector<const AddedToken*> raw, normed;
  int32_t top = int32_t(pieces.size()) - 1;
  for (AddedToken& t : added) {
    t.match = t.content;
    if (t.normalized) normalize(sc, t.match);
    if (t.match.empty()) continue;
    (t.normalized ? normed : raw).push_back(&t);
    top = std::max(top, t.id);
  }
  raw_added.build(raw);
  norm_added.build(normed);

  const size_t n = size_t(top + 1);
  pieces.resize(n);
  special.assign(n, 0);
  types.assign(n, Tokenizer::PieceType::Unused);
  for (const auto& [piece, id] : vocab) types[size_t(id)] = Tokenizer::PieceType::Normal;
  if (byte_fallback)
    for (int32_t id : byte_piece)
      if (id >= 0) types[size_t(id)] = Tokenizer::PieceType::Byte;
  if (unk >= 0) types[size_t(unk)] = Tokenizer::PieceType::Unknown;
  for (const AddedToken& t : added) {
    // A normalized token reads back in its normalized form, as the library's id_to_token gives it
    // (Mixtral's [INST] as "▁[INST]", whose first "▁" is then the dummy prefix).
    pieces[size_t(t.id)] = t.normalized ? t.match : t.content;
    special[size_t(t.id)] = t.special;
    if (t.special) types[size_t(t.id)] = Tokenizer::PieceType::Control;
    else if (types[size_t(t.id)] == Tokenizer::PieceType::Unused) types[size_t(t.id)] = Tokenizer::PieceType::Normal;
  }
  decoded.resize(n);
  for (size_t id = 0; id < n; id++) decoded[id] = decode_alone(pieces[id], special[id]);
  max_piece = input_bound();

  // ignore_merges compares whole pieces with the vocab; after ByteLevel they are raw bytes here.
  if (ignore_merges && std::any_of(pre.begin(), pre.end(), [](const PreStep& s) { return s.kind == PreStep::ByteLevel; })) {
    std::string bytes;
    for (const auto& [piece, id] : vocab) {
      bytes.clear();
      if (byte_level::decode(piece, bytes)) raw_vocab.emplace(bytes, id);
    }
  }

  // bos/eos/pad: tokenizer_config.json names them; otherwise config.json gives ids.
  auto read = [](const fs::path& p, json& out) {
    std::error_code ec;
    if (!fs::is_regular_file(p, ec)) return false;
    std::ifstream in(p, std::ios::binary);
    try {
      out = json::parse(in);
    } catch (const json::exception& e) {
      fail("{}: not valid JSON: {}", p.string(), e.what());
    }
    SKY_CHECK(out.is_object(), "{}: expected a JSON object, got {}", p.string(), out.type_name());
    return true;
  };
  json tc, mc;
  const bool have_tc = !dir.empty() && read(fs::path(dir) / "tokenizer_config.json", tc);
  const bool have_mc = !dir.empty() && read(fs::path(dir) / "config.json", mc);
  auto id_of = [&](const char* what, int& id) {
    const std::string key = std::string(what) + "_token";
    if (have_tc && tc.contains(key)) {
      const std::string file = (fs::path(dir) / "tokenizer_config.json").string();
      const json& v = tc[key];
      if (v.is_null()) return;  // explicitly none (Qwen2 has no bos)
      const json* c = v.is_object() && v.contains("content") ? &v["content"] : &v;
      SKY_CHECK(c->is_string(), "{}: {} must be a string or {{\"content\": ...}}, got {}", file, key, v.dump());
      const std::string s = c->get<std::string>();
      for (const AddedToken& t : added)
        if (t.content == s) return void(id = t.id);
      auto it = vocab.find(s);
      SKY_CHECK(it != vocab.end(), "{}: {} '{}' is not a token of {}", file, key, s, path);
      id = it->second;
    } else if (have_mc && mc.contains(key + "_id")) {
      const std::string file = (fs::path(dir) / "config.json").string();
      const json* v = &mc[key + "_id"];
      if (v->is_array() && !v->empty()) v = &(*v)[0];  // several eos ids (Llama 3.1): the first
      if (v->is_null()) return;
      SKY_CHECK(v->is_number_integer() && v->get<int64_t>() >= 0 && v->get<int64_t>() < int64_t(pieces.size()),
                "{}: {}_id must be an id below the tokenizer's {} (from {}), got {}", file, key, pieces.size(), path,
                mc[key + "_id"].dump());
      id = int(v->get<int64_t>());
    }
  };
  id_of("bos", bos);
  id_of("eos", eos);
  id_of("pad", pad);
}

// What the decoder makes of one token alone: its bytes, before the first token's dummy-prefix space
// is dropped and before malformed UTF-8 is repaired (both need the whole sequence).
std::string HfTokenizer::Impl::decode_alone(const std::string& piece, bool special_token) const {
  if (special_token) return "";
  std::string s = piece, t;
  for (const DecStep& d : dec) {
    switch (d.kind) {
      case DecStep::ByteLevel:  // characters outside the alphabet leave the token as it is
        t.clear();
        if (byte_level::decode(s, t)) s.swap(t);
        break;
      case DecStep::ByteFallback:
        if (s.size() == 6 && s.starts_with("<0x") && s.back() == '>' && std::isxdigit(uint8_t(s[3])) &&
            std::isxdigit(uint8_t(s[4])))
          s = std::string(1, char(std::stoi(s.substr(3, 2), nullptr, 16)));
        break;
      case DecStep::Metaspace:
      case DecStep::Replace: {
        const std::string& from = d.kind == DecStep::Metaspace ? d.text : d.pattern.literal;
        const std::string& to = d.kind == DecStep::Metaspace ? std::string(" ") : d.text;
        t.clear();
        if (d.kind == DecStep::Replace && d.pattern.regex >= 0) {
          Regex::Matcher m(*regexes[size_t(d.pattern.regex)]);
          size_t done = 0;
          Regex::for_each_match(m, s, [&](size_t b, size_t e) {
            t.append(s, done, b - done);
            t += to;
            done = e;
          });
          t.append(s, done);
        } else if (!from.empty()) {
          size_t done = 0;
          for (size_t p; (p = s.find(from, done)) != std::string::npos; done = p + from.size()) {
            t.append(s, done, p - done);
            t += to;
          }
          t.append(s, done);
        } else {
          t = s;
        }
        s.swap(t);
        break;
      }
      case DecStep::Strip: {  // on this token alone: up to `start` leading and `stop` trailing copies
        for (int k = 0; k < d.start && s.starts_with(d.text); k++) s.erase(0, d.text.size());
        for (int k = 0; k < d.stop && s.ends_with(d.text); k++) s.erase(s.size() - d.text.size());
        break;
      }
    }
  }
  return s;
}

// The most bytes of input text one id can stand for, so that a caller can bound a text's token
// count by its size before encoding it; SIZE_MAX where nothing bounds it (text a Split removes,
// white space an lstrip/rstrip token takes, unknown characters dropped or fused into one id).
size_t HfTokenizer::Impl::input_bound() const {
  constexpr size_t kNone = SIZE_MAX;
  for (const PreStep& p : pre)
    if (p.kind == PreStep::Split && p.behavior == Behavior::Removed) return kNone;
  for (const AddedToken& t : added)
    if (t.lstrip || t.rstrip) return kNone;
  const bool byte_level = std::any_of(pre.begin(), pre.end(), [](const PreStep& p) { return p.kind == PreStep::ByteLevel; });
  const bool every_char = (byte_level && *std::min_element(byte_char.begin(), byte_char.end()) >= 0) ||
                          (byte_fallback && *std::min_element(byte_piece.begin(), byte_piece.end()) >= 0);
  if (!every_char && (unk < 0 || fuse_unk)) return kNone;
  // Normalized text per id: a piece's decoded bytes (the text it matched), an added token's text,
  // one character (4 bytes) for an unknown one.
  size_t bytes = 4;
  for (const std::string& d : decoded) bytes = std::max(bytes, d.size());
  for (const AddedToken& t : added) bytes = std::max({bytes, t.content.size(), t.match.size()});
  // Normalizers that can shorten the text: composition (Hangul jamo 9 bytes to 3), compatibility
  // forms (a 4-byte letter to 1 byte), a Replace with shorter content.
  for (const NormStep& n : norm) {
    size_t f = 1;
    if (n.kind == NormStep::Unicode) f = n.form == NormalForm::NFKC || n.form == NormalForm::NFKD ? 4 : 3;
    if (n.kind == NormStep::Replace) {
      if (n.pattern.regex >= 0 || n.text.empty()) return kNone;
      f = (n.pattern.literal.size() + n.text.size() - 1) / n.text.size();
    }
    if (f > 1) bytes = bytes > kNone / f ? kNone : bytes * f;
  }
  return bytes;
}

// ---- encoding --------------------------------------------------------------------------------

// The ranges covering s: matches of the pattern and the gaps between them (flags inverted when the
// Split says invert), before a behavior combines them.
void HfTokenizer::Impl::find_ranges(Scratch& sc, const Pattern& p, std::string_view s, std::vector<Range>& out) const {
  out.clear();
  size_t done = 0;
  auto hit = [&](size_t b, size_t e) {
    if (done != b) out.push_back({done, b, false});
    out.push_back({b, e, true});
    done = e;
  };
  if (p.regex >= 0) {
    Regex::for_each_match(matcher(sc, p.regex), s, hit);
  } else if (!p.literal.empty()) {
    for (size_t q; (q = s.find(p.literal, done)) != std::string_view::npos;) hit(q, q + p.literal.size());
  }
  if (done != s.size()) out.push_back({done, s.size(), false});
}

void HfTokenizer::Impl::normalize(Scratch& sc, std::string& s) const {
  for (const NormStep& n : norm) {
    switch (n.kind) {
      case NormStep::Unicode:
        normalize_unicode(n.form, s);
        break;
      case NormStep::Prepend:
        if (!s.empty()) s.insert(0, n.text);
        break;
      case NormStep::Replace: {
        std::vector<Range> r;
        find_ranges(sc, n.pattern, s, r);
        std::string t;
        t.reserve(s.size());
        for (const Range& x : r) {
          if (x.match) t += n.text;
          else t.append(s, x.b, x.e - x.b);
        }
        s.swap(t);
        break;
      }
    }
  }
}

// One stretch of text between raw added tokens: normalized, searched for normalized added tokens,
// the rest pre-tokenized.
void HfTokenizer::Impl::segment(Scratch& sc, std::string_view s, bool at_origin, std::vector<int32_t>& out) const {
  std::string_view text = s;
  if (!norm.empty()) {
    sc.norm.assign(s);
    normalize(sc, sc.norm);
    text = sc.norm;
  }
  norm_added.split(
      text, [&](size_t b, size_t e) { pre_tokenize(sc, 0, text.substr(b, e - b), at_origin && b == 0, false, out); },
      [&](int32_t id) { out.push_back(id); });
}

// Runs pre-tokenizer step `step` on one piece and passes what it makes to the next step, the last
// one's pieces to the model. at_origin: the piece starts the input text (Metaspace's "first").
// raw: ByteLevel has run, so the piece is bytes still to be mapped to its alphabet; the mapping is
// only written out when a later step needs the text (the model maps bytes to ids directly).
void HfTokenizer::Impl::pre_tokenize(Scratch& sc, size_t step, std::string_view s, bool at_origin, bool raw,
                                     std::vector<int32_t>& out) const {
  if (s.empty()) return;
  if (step == pre.size()) return word(sc, s, raw, out);
  if (sc.bufs.size() < pre.size()) {
    sc.bufs.resize(pre.size());
    sc.ranges.resize(pre.size());
  }
  std::string& buf = sc.bufs[step];
  std::vector<Range>& ranges = sc.ranges[step];
  if (raw) {
    buf.clear();
    byte_level::encode(s, buf);
    s = buf;
    raw = false;
  }
  const PreStep& p = pre[step];
  switch (p.kind) {
    case PreStep::Split: {
      find_ranges(sc, Pattern{p.literal, p.regex}, s, ranges);
      if (p.invert)
        for (Range& r : ranges) r.match = !r.match;
      apply_behavior(p.behavior, ranges);
      for (const Range& r : ranges) pre_tokenize(sc, step + 1, s.substr(r.b, r.e - r.b), at_origin && r.b == 0, false, out);
      break;
    }
    case PreStep::ByteLevel: {
      if (p.add_prefix_space && s[0] != ' ') {
        std::string t = " ";
        t += s;
        buf.swap(t);
        s = buf;
      }
      if (p.regex < 0) return pre_tokenize(sc, step + 1, s, at_origin, true, out);
      find_ranges(sc, Pattern{"", p.regex}, s, ranges);
      for (const Range& r : ranges) pre_tokenize(sc, step + 1, s.substr(r.b, r.e - r.b), at_origin && r.b == 0, true, out);
      break;
    }
    case PreStep::Metaspace: {
      // Spaces become the replacement first; then it is prepended unless the text already starts
      // with one (a leading space).
      std::string t;
      t.reserve(s.size() + 8);
      const bool prepend = p.prepend == PrependScheme::Always || (p.prepend == PrependScheme::First && at_origin);
      if (prepend && s[0] != ' ' && !s.starts_with(p.replacement)) t += p.replacement;
      for (char c : s) {
        if (c == ' ') t += p.replacement;
        else t += c;
      }
      buf.swap(t);
      s = buf;
      if (!p.split) return pre_tokenize(sc, step + 1, s, at_origin, false, out);
      // Each replacement character starts a piece (a run of them: all but the last stand alone).
      ranges.clear();
      size_t done = 0;
      for (size_t q; (q = s.find(p.replacement, done)) != std::string_view::npos; done = q + p.replacement.size()) {
        if (q != done) ranges.push_back({done, q, false});
        ranges.push_back({q, q + p.replacement.size(), true});
      }
      if (done != s.size()) ranges.push_back({done, s.size(), false});
      apply_behavior(Behavior::MergedWithNext, ranges);
      for (const Range& r : ranges) pre_tokenize(sc, step + 1, s.substr(r.b, r.e - r.b), at_origin && r.b == 0, false, out);
      break;
    }
  }
}

// The model's first symbols for a piece, as the library builds them: each character is a vocab
// piece, else its <0xNN> byte pieces (byte_fallback), else unk (consecutive ones fused into one when
// fuse_unk), else dropped.
void HfTokenizer::Impl::symbols(Scratch& sc, std::string_view s) const {
  std::vector<int32_t>& syms = sc.syms;
  bool pending_unk = false;
  const bool plain = prefix.empty() && suffix.empty();
  for (size_t i = 0; i < s.size();) {
    size_t n = utf8::char_len(static_cast<unsigned char>(s[i]));
    std::string_view c = s.substr(i, n);
    int32_t id = -1;
    if (plain) {  // one character: its piece from the tables
      char32_t cp;
      if (n == 1) id = ascii_piece[static_cast<unsigned char>(s[i]) & 0x7F];
      else if (utf8::decode(s, i, &cp) == n)
        if (auto it = char_piece.find(cp); it != char_piece.end()) id = it->second;
    } else {
      sc.word.clear();
      if (i > 0) sc.word += prefix;
      sc.word += c;
      if (i + n >= s.size()) sc.word += suffix;
      c = sc.word;
      if (auto it = vocab.find(c); it != vocab.end()) id = it->second;
    }
    i += n;
    if (id >= 0) {
      if (pending_unk) syms.push_back(unk);
      pending_unk = false;
      syms.push_back(id);
      continue;
    }
    if (byte_fallback && std::all_of(c.begin(), c.end(), [&](char b) { return byte_piece[uint8_t(b)] >= 0; })) {
      // (A pending unk stays pending across these, as in the library.)
      for (char b : c) syms.push_back(byte_piece[uint8_t(b)]);
      continue;
    }
    if (unk_token.empty()) continue;
    SKY_CHECK(unk >= 0, "tokenizer {}: unk_token '{}' is not in the vocab", path, unk_token);
    if (pending_unk && !fuse_unk) syms.push_back(unk);
    pending_unk = true;
  }
  if (pending_unk) syms.push_back(unk);
}

// Applies merges lowest rank first (leftmost among equals) until none applies. Short words scan
// the pair ranks directly; long ones (runs of CJK or of one character) use a heap, as the library
// does for all words.
void HfTokenizer::Impl::merge_all(Scratch& sc) const {
  std::vector<int32_t>& syms = sc.syms;
  size_t n = syms.size();
  if (n < 2) return;
  if (n <= 64) {
    std::vector<int32_t>& rank = sc.ranks;
    std::vector<int32_t>& to = sc.new_ids;
    rank.resize(n - 1);
    to.resize(n - 1);
    auto pair = [&](size_t i) {
      const Merge* m = merge(syms[i], syms[i + 1]);
      rank[i] = m ? m->rank : INT_MAX;
      to[i] = m ? m->id : -1;
    };
    for (size_t i = 0; i + 1 < n; i++) pair(i);
    while (n > 1) {
      size_t best = 0;
      for (size_t i = 1; i + 1 < n; i++)
        if (rank[i] < rank[best]) best = i;
      if (rank[best] == INT_MAX) break;
      syms[best] = to[best];
      syms.erase(syms.begin() + std::ptrdiff_t(best) + 1);
      rank.erase(rank.begin() + std::ptrdiff_t(best));
      to.erase(to.begin() + std::ptrdiff_t(best));
      n--;
      if (best > 0) pair(best - 1);
      if (best + 1 < n) pair(best);
    }
    return;
  }
  struct Entry {
    int32_t rank, pos, id;
    bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<int32_t> prev(n), next(n);
  std::vector<uint8_t> alive(n, 1);
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> q;
  for (size_t i = 0; i < n; i++) {
    prev[i] = int32_t(i) - 1;
    next[i] = i + 1 < n ? int32_t(i + 1) : -1;
    if (i + 1 < n)
      if (const Merge* m = merge(syms[i], syms[i + 1])) q.push({m->rank, int32_t(i), m->id});
  }
  while (!q.empty()) {
    Entry top = q.top();
    q.pop();
    const int32_t p = top.pos, nx = next[p];
    if (!alive[p] || nx < 0) continue;
    const Merge* m = merge(syms[p], syms[nx]);
    if (!m || m->id != top.id) continue;  // stale: a neighbour has changed since
    syms[p] = top.id;
    alive[nx] = 0;
    next[p] = next[nx];
    if (next[p] >= 0) prev[next[p]] = p;
    if (prev[p] >= 0)
      if (const Merge* l = merge(syms[prev[p]], syms[p])) q.push({l->rank, prev[p], l->id});
    if (next[p] >= 0)
      if (const Merge* r = merge(syms[p], syms[next[p]])) q.push({r->rank, p, r->id});
  }
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (alive[i]) syms[k++] = syms[i];
  syms.resize(k);
}

// One pre-tokenized piece through the BPE model.
void HfTokenizer::Impl::word(Scratch& sc, std::string_view s, bool raw, std::vector<int32_t>& out) const {
  if (ignore_merges) {
    const PieceMap& m = raw ? raw_vocab : vocab;
    if (auto it = m.find(s); it != m.end()) return out.push_back(it->second);
  }
  sc.syms.clear();
  bool direct = raw && prefix.empty() && suffix.empty();
  if (direct) {  // each byte is its alphabet character's piece
    for (char c : s) {
      int32_t id = byte_char[uint8_t(c)];
      if (id < 0) {
        direct = false;
        break;
      }
      sc.syms.push_back(id);
    }
  }
  if (!direct) {
    sc.syms.clear();
    if (raw) {
      sc.mapped.clear();
      byte_level::encode(s, sc.mapped);
      s = sc.mapped;
    }
    symbols(sc, s);
  }
  merge_all(sc);
  out.insert(out.end(), sc.syms.begin(), sc.syms.end());
}

// ---- public ----------------------------------------------------------------------------------

HfTokenizer::HfTokenizer() : impl_(std::make_unique<Impl>()) {}
HfTokenizer::~HfTokenizer() = default;

std::shared_ptr<const HfTokenizer> HfTokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SKY_CHECK(in.good(), "tokenizer {}: cannot read it", path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  SKY_CHECK(!in.bad(), "tokenizer {}: read error", path);
  return parse(text, path, fs::path(path).parent_path().string());
}

std::shared_ptr<const HfTokenizer> HfTokenizer::parse(std::string_view text, const std::string& name,
                                                      const std::string& dir) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("tokenizer {}: not valid JSON ({} bytes): {}", name, text.size(), e.what());
  }
  JsonReader r(name);
  r.object(j, "top level");
  std::shared_ptr<HfTokenizer> t(new HfTokenizer());
  Impl& m = *t->impl_;
  m.path = name;
  if (const json* v = r.opt(j, "version"))
    if (!v->is_string() || v->get<std::string>() != "1.0") r.bad("version", "'{}' is not the known 1.0", v->dump());
  m.read_model(r, r.req(j, "model", "top level"));
  if (const json* n = r.opt(j, "normalizer")) m.read_normalizer(r, *n, "normalizer");
  if (const json* p = r.opt(j, "pre_tokenizer")) m.read_pre_tokenizer(r, *p, "pre_tokenizer");
  const json* d = r.opt(j, "decoder");
  if (!d) r.bad("decoder", "is missing: without one the library joins tokens with spaces, which skymoe does not do");
  bool joined = false;
  m.read_decoder(r, *d, "decoder", joined);
  if (const json* a = r.opt(j, "added_tokens")) m.read_added(r, *a);
  m.finish(dir);
  return t;
}

std::shared_ptr<const HfTokenizer> HfTokenizer::parse_with_ids(std::string_view json_text, const std::string& name,
                                                               int bos, int eos, int pad) {
  std::shared_ptr<const HfTokenizer> t = parse(json_text, name, "");
  Impl& m = *t->impl_;
  const int n = int(m.pieces.size());
  m.bos = bos >= 0 && bos < n ? bos : -1;
  m.eos = eos >= 0 && eos < n ? eos : -1;
  m.pad = pad >= 0 && pad < n ? pad : -1;
  return t;
}

std::vector<int32_t> HfTokenizer::encode(std::string_view text) const {
  const Impl& m = *impl_;
  std::string repaired;
  if (utf8::invalid_at(text) != std::string_view::npos) {
    repaired = utf8::repair(text);
    text = repaired;
  }
  Scratch sc;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  m.raw_added.split(
      text, [&](size_t b, size_t e) { m.segment(sc, text.substr(b, e - b), b == 0, out); },
      [&](int32_t id) { out.push_back(id); });
  return out;
}

std::string HfTokenizer::decode(const std::vector<int32_t>& ids) const {
  const Impl& m = *impl_;
  std::string s;
  bool first = true;
  for (size_t i = 0; i < ids.size(); i++) {
    SKY_CHECK(ids[i] >= 0 && size_t(ids[i]) < m.pieces.size(),
              "tokenizer {}: id {} at position {} is outside the vocab of {}", m.path, ids[i], i, m.pieces.size());
    const std::string& p = m.decoded[size_t(ids[i])];
    if (p.empty()) continue;
    // The same rule as StreamDecoder: the first piece loses the space the encoder put in front.
    if (first && m.dummy_prefix && p[0] == ' ' && m.pieces[size_t(ids[i])].starts_with(kMetaspace)) s.append(p, 1);
    else s += p;
    first = false;
  }
  return utf8::invalid_at(s) == std::string::npos ? s : utf8::repair(s);
}

std::string HfTokenizer::decode_piece(int32_t id) const {
  impl_->check_id(id);
  return impl_->decoded[size_t(id)];
}

const std::string& HfTokenizer::id_to_piece(int32_t id) const {
  impl_->check_id(id);
  return impl_->pieces[size_t(id)];
}

Tokenizer::PieceType HfTokenizer::piece_type(int32_t id) const {
  impl_->check_id(id);
  return impl_->types[size_t(id)];
}

int HfTokenizer::vocab_size() const { return int(impl_->pieces.size()); }
int HfTokenizer::bos_id() const { return impl_->bos; }
int HfTokenizer::eos_id() const { return impl_->eos; }
int HfTokenizer::unk_id() const { return impl_->unk; }
int HfTokenizer::pad_id() const { return impl_->pad; }
bool HfTokenizer::adds_dummy_prefix() const { return impl_->dummy_prefix; }
size_t HfTokenizer::max_piece_bytes() const { return impl_->max_piece; }
const std::string& HfTokenizer::path() const { return impl_->path; }

}  // namespace sky
