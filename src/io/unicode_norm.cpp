#include "io/unicode_norm.h"

#include <utf8proc.h>

#include <cstdlib>

#include "core/error.h"
#include "io/utf8.h"

namespace sky {

namespace {

// Characters that are their own normal form in every form asked for here and that no character
// before or after them can compose with or reorder around (canonical combining class 0, quick
// check "yes"). Under the compatibility forms only ASCII is that simple; under NFC and NFD the
// common scripts of the tokenizers' corpora are. tests/test_hf_tokenizer.cpp checks these ranges
// against utf8proc code point by code point.
bool stable_char(NormalForm form, char32_t c) {
  if (c < 0x80) return true;
  if (form == NormalForm::NFKC || form == NormalForm::NFKD) return false;
  if (form == NormalForm::NFD) return (c < 0xC0) || (c >= 0x4E00 && c <= 0x9FFF);
  // NFC: Latin-1 to spacing modifiers (combining marks start at U+0300), Cyrillic without its
  // combining marks, general punctuation but the two quads (they decompose to spaces), CJK
  // punctuation without its combining tone marks, kana without the voicing marks, CJK ideographs,
  // Hangul syllables (a following trailing jamo is not stable, so it sends the text through
  // utf8proc), variation selectors, full- and half-width forms, emoji.
  return c < 0x300 || (c >= 0x400 && c <= 0x482) || (c >= 0x48A && c <= 0x4FF) || (c >= 0x2002 && c <= 0x206F) ||
         (c >= 0x3000 && c <= 0x3029) || (c >= 0x3041 && c <= 0x3096) || (c >= 0x30A1 && c <= 0x30FA) ||
         (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0xAC00 && c <= 0xD7A3) ||
         (c >= 0xFE00 && c <= 0xFE0F) || (c >= 0xFF01 && c <= 0xFFDC) || (c >= 0x1F300 && c <= 0x1F6FF) ||
         (c >= 0x1F900 && c <= 0x1FAFF);
}

}  // namespace

bool unicode_norm_stable(NormalForm form, std::string_view s) {
  char32_t cp;
  for (size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      i++;
      continue;
    }
    size_t n = utf8::decode(s, i, &cp);
    if (!n || !stable_char(form, cp)) return false;
    i += n;
  }
  return true;
}

void normalize_unicode(NormalForm form, std::string& s) {
  if (unicode_norm_stable(form, s)) return;
  int opt = UTF8PROC_STABLE;
  switch (form) {
    case NormalForm::NFC: opt |= UTF8PROC_COMPOSE; break;
    case NormalForm::NFD: opt |= UTF8PROC_DECOMPOSE; break;
    case NormalForm::NFKC: opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case NormalForm::NFKD: opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  }
  utf8proc_uint8_t* out = nullptr;
  utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), utf8proc_ssize_t(s.size()),
                                    &out, utf8proc_option_t(opt));
  SKY_CHECK(n >= 0, "unicode normalization failed: {}", utf8proc_errmsg(n));
  s.assign(reinterpret_cast<char*>(out), size_t(n));
  std::free(out);
}

}  // namespace sky

namespace sky {

bool unicode_is_word(char32_t cp) {
  if (cp < 0x80) return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') || cp == '_';
  if (cp == 0x200C || cp == 0x200D) return true;
  switch (utf8proc_category(utf8proc_int32_t(cp))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

}  // namespace sky
