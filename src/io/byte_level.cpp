#include "io/byte_level.h"

#include <array>

#include "io/utf8.h"

namespace sky::byte_level {

namespace {

bool stands_for_itself(int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); }

struct Tables {
  std::array<char32_t, 256> chars{};
  std::array<std::string, 256> utf8;
  std::array<int16_t, 0x200> bytes{};  // every character of the alphabet is below U+0200
  Tables() {
    bytes.fill(-1);
    char32_t next = 0x100;
    for (int b = 0; b < 256; b++) {
      chars[b] = stands_for_itself(b) ? char32_t(b) : next++;
      utf8::append(utf8[b], chars[b]);
      bytes[chars[b]] = int16_t(b);
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

char32_t char_of(uint8_t b) { return tables().chars[b]; }
std::string_view utf8_of(uint8_t b) { return tables().utf8[b]; }
int byte_of(char32_t c) { return c < 0x200 ? tables().bytes[c] : -1; }

void encode(std::string_view s, std::string& out) {
  const Tables& t = tables();
  for (unsigned char c : s) out += t.utf8[c];
}

bool decode(std::string_view s, std::string& out) {
  char32_t cp;
  for (size_t i = 0; i < s.size();) {
    size_t n = utf8::decode(s, i, &cp);
    int b = n ? byte_of(cp) : -1;
    if (b < 0) return false;
    out += char(b);
    i += n;
  }
  return true;
}

}  // namespace sky::byte_level
