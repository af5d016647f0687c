#pragma once
// GPT-2's byte-level alphabet: every byte gets a printable character, so byte-level BPE
// vocabularies (GPT-2, Qwen2, Llama 3, DeepSeek) store any byte string as ordinary text. Bytes that
// are printable Latin-1 ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) stand for themselves; the other
// 68 (controls, space, U+00AD...) take U+0100, U+0101, ... in byte order, so a space is "Ġ" (U+0120)
// and a newline "Ċ" (U+010A).
#include <cstdint>
#include <string>
#include <string_view>

namespace sky::byte_level {

// The character standing for byte b.
char32_t char_of(uint8_t b);
// The same as UTF-8 (2 bytes at most).
std::string_view utf8_of(uint8_t b);
// The byte a character stands for, or -1 when it is not in the alphabet.
int byte_of(char32_t c);

// Maps each byte of s to its character and appends the UTF-8 to out.
void encode(std::string_view s, std::string& out);
// The bytes a string of alphabet characters stands for; false (out unspecified) when some
// character is outside the alphabet.
bool decode(std::string_view s, std::string& out);

}  // namespace sky::byte_level
