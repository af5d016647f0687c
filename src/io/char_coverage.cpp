#include "io/char_coverage.h"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <functional>
#include <unordered_map>

#include "core/error.h"

namespace sky {

double coverage_for_vocab(const std::vector<std::string>& text_files, int max_chars, double cap, int* needed) {
  SKY_CHECK(max_chars > 0, "character coverage: max_chars must be positive, got {}", max_chars);
  std::unordered_map<uint32_t, uint64_t> counts;
  uint64_t total = 0;
  std::vector<char> buf(1 << 20);
  for (const auto& path : text_files) {
    std::ifstream in(path, std::ios::binary);
    SKY_CHECK(in.good(), "character coverage: cannot read {}", path);
    uint32_t cp = 0;
    int need = 0;  // continuation bytes still expected
    while (in.read(buf.data(), std::streamsize(buf.size())) || in.gcount() > 0) {
      for (std::streamsize i = 0; i < in.gcount(); i++) {
        const unsigned char c = buf[i];
        if (need > 0 && (c & 0xC0) == 0x80) {
          cp = (cp << 6) | (c & 0x3F);
          if (--need == 0) { counts[cp]++; total++; }
          continue;
        }
        need = 0;  // a malformed sequence is simply not counted
        if (c < 0x80) {
          if (c != '\n' && c != '\r') { counts[c]++; total++; }
        } else if ((c >> 5) == 6) { cp = c & 0x1F; need = 1; }
        else if ((c >> 4) == 14) { cp = c & 0x0F; need = 2; }
        else if ((c >> 3) == 30) { cp = c & 0x07; need = 3; }
      }
    }
  }
  if (total == 0 || counts.size() <= size_t(max_chars)) return cap;
  std::vector<uint64_t> sorted;
  sorted.reserve(counts.size());
  for (auto& [ch, n] : counts) sorted.push_back(n);
  std::sort(sorted.begin(), sorted.end(), std::greater<>());
  // SentencePiece adds characters, most frequent first, until the covered share reaches the
  // coverage; stopping one character short of max_chars leaves room for rounding.
  uint64_t covered = 0;
  for (int i = 0; i < max_chars - 1; i++) covered += sorted[i];
  if (double(covered) / double(total) < kMinCoverage) {
    int n = 0;
    for (uint64_t c = 0; double(c) / double(total) < kMinCoverage; n++) c += sorted[n];
    if (needed) {
      *needed = n + 1;  // the same room for rounding as above
      return kMinCoverage;
    }
    fail("even at character coverage {} (the lowest SentencePiece accepts) this text needs {} characters with "
         "their own piece, more than the {} there is room for",
         kMinCoverage, n + 1, max_chars);
  }
  return std::clamp(double(covered) / double(total), kMinCoverage, cap);
}

}  // namespace sky
