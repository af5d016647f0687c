#pragma once
// Text in, text out: encode a prompt, sample a continuation with a KV cache, decode it as it comes.
#include <functional>
#include <string>

#include "infer/sampler.h"
#include "io/tokenizer.h"
#include "model/model.h"

namespace sky {

struct TextGenOptions {
  int max_new_tokens = 48;
  SamplerOptions sampler;
  bool doc_start = true;  // put eos before the prompt: models trained on eos-separated documents
                          // then see the prompt as the start of a new document
  bool stop_at_eos = true;
  bool printable = true;  // pass the text through printable_text() (safe to print and to put in HTML)
};

// Drops terminal escape sequences and control characters other than newline and tab (the fortune
// files hold color escapes and overstruck text, so a model trained on them writes them too) and
// turns bytes that are not valid UTF-8 into U+FFFD.
std::string printable_text(const std::string& s);

// printable_text() for text that arrives in pieces: an escape sequence may span pieces, a
// character may not (StreamDecoder's output is whole characters).
class PrintableFilter {
 public:
  std::string push(const std::string& s);

 private:
  enum { Normal, Esc, Csi } state_ = Normal;
};

// Returns the continuation only (without the prompt). `on_text` (optional) sees each decoded piece
// as soon as it forms whole UTF-8 characters. Generation stops at the model's context length.
std::string generate_text(const Model& m, const Tokenizer& tok, const std::string& prompt, const TextGenOptions& o,
                          const std::function<void(const std::string&)>& on_text = {});

}  // namespace sky
