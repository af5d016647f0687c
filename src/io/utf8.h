#pragma once
// UTF-8 helpers the tokenizers need: walking code points, checking and repairing text, and the
// Unicode character classes Hugging Face `tokenizers` tests with Rust's char methods.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sky::utf8 {

// Length of the well-formed UTF-8 character at s[i] (1..4) with its code point in *cp, or 0 for a
// stray or continuation byte, an overlong form, a surrogate, a value beyond U+10FFFF or a cut-short
// sequence.
size_t decode(std::string_view s, size_t i, char32_t* cp);

// Length of the character starting with byte c, from that byte alone (1 for a stray byte), for
// walking text already known to be valid.
inline size_t char_len(unsigned char c) { return c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

void append(std::string& out, char32_t cp);

// Offset of the first byte that does not start a well-formed character, or npos.
size_t invalid_at(std::string_view s);

// s with each byte that does not start a well-formed character replaced by U+FFFD.
std::string repair(std::string_view s);

// Unicode White_Space (what Rust's char::is_whitespace and regex \s test).
bool is_white_space(char32_t cp);

}  // namespace sky::utf8
