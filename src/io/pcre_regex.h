#pragma once
// Regular expressions for tokenizer pre-tokenization, through PCRE2: Unicode properties (\p{L},
// \p{N}), lookahead and case-insensitive groups, as the regexes in tokenizer.json files use them
// (std::regex has neither Unicode classes nor the speed). Patterns are JIT-compiled where PCRE2
// has a JIT for the CPU.
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace sky {

class Regex {
 public:
  // `what` names the pattern's origin in errors (file and component), e.g. "tokenizer.json: Split".
  // A pattern PCRE2 rejects is a sky::Error with PCRE2's message and the offset in the pattern.
  Regex(std::string_view pattern, std::string what);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  const std::string& pattern() const { return pattern_; }

  // Match state for one thread at a time (the compiled Regex itself is shared).
  class Matcher {
   public:
    explicit Matcher(const Regex& re);
    ~Matcher();
    Matcher(Matcher&&) noexcept;
    // The first match in s starting at or after `from`, as [*b, *e); false when there is none.
    // s must be valid UTF-8 and `from` a character boundary.
    bool find(std::string_view s, size_t from, size_t* b, size_t* e);

   private:
    struct State;
    std::unique_ptr<State> st_;
  };

  // Calls fn(begin, end) for the successive matches in s, the way Hugging Face `tokenizers` walks
  // them (Oniguruma's find_iter): after a match the search resumes at its end, and an empty match
  // right where the previous one ended is skipped by moving one character on.
  template <class Fn>
  static void for_each_match(Matcher& m, std::string_view s, Fn&& fn) {
    size_t pos = 0, last_end = std::string_view::npos, b, e;
    while (pos <= s.size() && m.find(s, pos, &b, &e)) {
      if (b == e && e == last_end) {
        pos = e + (e < s.size() ? char_len(s[e]) : 1);
        continue;
      }
      pos = last_end = e;
      fn(b, e);
      if (b == e) pos = e + (e < s.size() ? char_len(s[e]) : 1);
    }
  }

 private:
  static size_t char_len(char c) {
    unsigned char u = static_cast<unsigned char>(c);
    return u < 0xC0 ? 1 : u < 0xE0 ? 2 : u < 0xF0 ? 3 : 4;
  }
  struct Code;
  std::unique_ptr<Code> code_;
  std::string pattern_, what_;
};

}  // namespace sky
