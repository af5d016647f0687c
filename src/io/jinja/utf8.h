#pragma once
// The little UTF-8 the template engine needs: Python strings count and slice characters, not bytes.
#include <cstdint>
#include <string>
#include <string_view>

namespace sky::jinja {

// The code point at s[i] and its length in *n. A malformed or cut-short sequence is one byte
// standing for U+FFFD, so a caller that copies s[i, i + n) keeps the original bytes.
inline uint32_t utf8_decode(std::string_view s, size_t i, size_t* n) {
  const unsigned char c = s[i];
  *n = 1;
  if (c < 0x80) return c;
  size_t len;
  uint32_t cp;
  if (c >= 0xC2 && c <= 0xDF)
    len = 2, cp = c & 0x1F;
  else if (c >= 0xE0 && c <= 0xEF)
    len = 3, cp = c & 0x0F;
  else if (c >= 0xF0 && c <= 0xF4)
    len = 4, cp = c & 0x07;
  else
    return 0xFFFD;
  if (i + len > s.size()) return 0xFFFD;
  for (size_t k = 1; k < len; k++) {
    const unsigned char d = s[i + k];
    if ((d & 0xC0) != 0x80) return 0xFFFD;
    cp = cp << 6 | (d & 0x3F);
  }
  if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
    return 0xFFFD;
  *n = len;
  return cp;
}

inline void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | cp >> 6), out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | cp >> 12), out += char(0x80 | (cp >> 6 & 0x3F)), out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | cp >> 18), out += char(0x80 | (cp >> 12 & 0x3F)), out += char(0x80 | (cp >> 6 & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

// Python's str.isspace() (what strip() and split() remove).
inline bool py_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

}  // namespace sky::jinja
