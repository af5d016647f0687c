#pragma once
// Unicode normalization forms (NFC, NFD, NFKC, NFKD) for tokenizer normalizers, through utf8proc
// (a small Debian library; PCRE2 matches but never normalizes, and ICU is far bigger than needed).
#include <string>
#include <string_view>

namespace sky {

enum class NormalForm { NFC, NFD, NFKC, NFKD };

// Rewrites s (valid UTF-8) in the given form. Text made only of characters that no form changes
// and that never combine with a neighbour (ASCII, most CJK, kana, Hangul syllables under NFC...)
// is left as it is without calling utf8proc.
void normalize_unicode(NormalForm form, std::string& s);

// Whether every character of s is one the fast path above leaves alone under `form` (tests).
bool unicode_norm_stable(NormalForm form, std::string_view s);

}  // namespace sky

namespace sky {
// Rust regex's \w: letters, marks, decimal digits, connector punctuation, letter numbers and the
// joiners (what `single_word` added tokens test at their edges).
bool unicode_is_word(char32_t cp);
}  // namespace sky
