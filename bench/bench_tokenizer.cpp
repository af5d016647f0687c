// Encoding speed of a tokenizer (tokenizer.json or SentencePiece .model) on a corpus, one thread,
// documents one at a time, as `skymoe tokenize` encodes them. bench/bench_tokenizer.py drives it
// against Hugging Face `tokenizers` on the same files.
//
//   bench_tokenizer TOKENIZER CORPUS [EXPECTED_IDS] [--repeat N]
//
// CORPUS holds documents separated by NUL bytes. EXPECTED_IDS (optional) is, per document, its id
// count then its ids (little-endian uint32): every document's ids are compared, and the first
// difference is printed. Prints one JSON line.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/tokenizer.h"

namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SKY_CHECK(in.good(), "cannot read {}", path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

int main(int argc, char** argv) try {
  std::vector<std::string> pos;
  int repeat = 3;
  for (int i = 1; i < argc; i++) {
    if (std::strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) repeat = std::max(1, std::atoi(argv[++i]));
    else pos.push_back(argv[i]);
  }
  SKY_CHECK(pos.size() == 2 || pos.size() == 3, "usage: bench_tokenizer TOKENIZER CORPUS [EXPECTED_IDS] [--repeat N]");
  auto t_load = std::chrono::steady_clock::now();
  sky::Tokenizer tok = sky::Tokenizer::load(pos[0]);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  const std::string corpus = read_all(pos[1]);
  std::vector<std::string_view> docs;
  for (size_t b = 0; b < corpus.size();) {
    size_t e = corpus.find('\0', b);
    if (e == std::string::npos) e = corpus.size();
    docs.push_back(std::string_view(corpus).substr(b, e - b));
    b = e + 1;
  }

  // Best of `repeat` passes over all documents.
  std::vector<std::vector<int32_t>> ids(docs.size());
  double best = 1e30;
  size_t tokens = 0;
  for (int r = 0; r < repeat; r++) {
    auto t0 = std::chrono::steady_clock::now();
    tokens = 0;
    for (size_t d = 0; d < docs.size(); d++) {
      ids[d] = tok.encode(docs[d]);
      tokens += ids[d].size();
    }
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }

  size_t mismatched = 0;
  if (pos.size() == 3) {
    const std::string exp = read_all(pos[2]);
    size_t at = 0;
    auto next = [&] {
      SKY_CHECK(at + 4 <= exp.size(), "{}: ends early", pos[2]);
      uint32_t v;
      std::memcpy(&v, exp.data() + at, 4);
      at += 4;
      return v;
    };
    for (size_t d = 0; d < docs.size(); d++) {
      std::vector<int32_t> want(next());
      for (auto& v : want) v = int32_t(next());
      if (want == ids[d]) continue;
      if (mismatched++ == 0) {
        size_t i = 0;
        while (i < want.size() && i < ids[d].size() && want[i] == ids[d][i]) i++;
        fmt::print(stderr, "document {} differs at id {} (got {}, want {}): '{}'\n", d, i,
                   i < ids[d].size() ? ids[d][i] : -1, i < want.size() ? want[i] : -1, docs[d].substr(0, 200));
      }
    }
  }
  fmt::print("{{\"tokenizer\": \"{}\", \"documents\": {}, \"bytes\": {}, \"tokens\": {}, \"seconds\": {:.4f}, "
             "\"mb_per_s\": {:.2f}, \"load_seconds\": {:.3f}, \"mismatched_documents\": {}}}\n",
             tok.path(), docs.size(), corpus.size(), tokens, best, corpus.size() / best / 1e6, load_s, mismatched);
  return mismatched ? 1 : 0;
} catch (const std::exception& e) {
  fmt::print(stderr, "bench_tokenizer: {}\n", e.what());
  return 2;
}
