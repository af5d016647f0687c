#include "io/pcre_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/error.h"

namespace sky {

namespace {

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  int n = pcre2_get_error_message(code, buf, sizeof buf);
  return n < 0 ? fmt::format("PCRE2 error {}", code) : std::string(reinterpret_cast<char*>(buf), size_t(n));
}

// The JIT's default stack (32 KiB on the machine stack) can run out on long runs of one class
// matched with backtracking (e.g. megabytes of spaces against \s+(?!\S)); such a match is retried
// with a stack this big before the interpreter (heap-limited) gets it.
constexpr size_t kJitStackMax = 8u << 20;

}  // namespace

struct Regex::Code {
  pcre2_code* re = nullptr;
  bool jit = false;
  ~Code() { pcre2_code_free(re); }
};

Regex::Regex(std::string_view pattern, std::string what)
    : code_(std::make_unique<Code>()), pattern_(pattern), what_(std::move(what)) {
  int err = 0;
  PCRE2_SIZE off = 0;
  // UTF: the subject is UTF-8 text; UCP: \s, \w, \d and [[:alpha:]] follow Unicode properties, as
  // in Oniguruma (which Hugging Face `tokenizers` uses).
  code_->re = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err,
                            &off, nullptr);
  SKY_CHECK(code_->re, "{}: bad regex /{}/ at offset {}: {}", what_, pattern_, off, pcre2_message(err));
  code_->jit = pcre2_jit_compile(code_->re, PCRE2_JIT_COMPLETE) == 0;  // no JIT on this CPU: interpret
}

Regex::~Regex() = default;

struct Regex::Matcher::State {
  const Regex* re;
  pcre2_match_data* md = nullptr;
  pcre2_match_context* big_ctx = nullptr;
  pcre2_jit_stack* big_stack = nullptr;
  ~State() {
    pcre2_match_data_free(md);
    pcre2_match_context_free(big_ctx);
    pcre2_jit_stack_free(big_stack);
  }
};

Regex::Matcher::Matcher(const Regex& re) : st_(std::make_unique<State>()) {
  st_->re = &re;
  st_->md = pcre2_match_data_create_from_pattern(re.code_->re, nullptr);
  SKY_CHECK(st_->md, "{}: out of memory for regex match data", re.what_);
}

Regex::Matcher::~Matcher() = default;
Regex::Matcher::Matcher(Matcher&&) noexcept = default;

bool Regex::Matcher::find(std::string_view s, size_t from, size_t* b, size_t* e) {
  State& st = *st_;
  const Code& c = *st.re->code_;
  auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  int rc;
  if (c.jit) {
    rc = pcre2_jit_match(c.re, subject, s.size(), from, 0, st.md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      if (!st.big_ctx) {
        st.big_stack = pcre2_jit_stack_create(32u << 10, kJitStackMax, nullptr);
        st.big_ctx = pcre2_match_context_create(nullptr);
        SKY_CHECK(st.big_stack && st.big_ctx, "{}: out of memory for the regex JIT stack", st.re->what_);
        pcre2_jit_stack_assign(st.big_ctx, nullptr, st.big_stack);
      }
      rc = pcre2_jit_match(c.re, subject, s.size(), from, 0, st.md, st.big_ctx);
    }
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
      rc = pcre2_match(c.re, subject, s.size(), from, PCRE2_NO_JIT | PCRE2_NO_UTF_CHECK, st.md, nullptr);
  } else {
    rc = pcre2_match(c.re, subject, s.size(), from, PCRE2_NO_UTF_CHECK, st.md, nullptr);
  }
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  SKY_CHECK(rc > 0, "{}: regex /{}/ failed on a text of {} bytes: {}", st.re->what_, st.re->pattern_, s.size(),
            pcre2_message(rc));
  const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
  *b = ov[0];
  *e = ov[1];
  return true;
}

}  // namespace sky
