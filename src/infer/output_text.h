#pragma once
// What a client sees of a generation: token ids turned into text one at a time (whole UTF-8
// characters only), cut at the first stop string. The same object produces both the streamed
// pieces and the non-streaming text, so the two always agree.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/tokenizer.h"

namespace sky {

// Text-level stop strings over a stream of text pieces. Text that might be the start of a stop
// string is held back until the next piece decides it; the first match ends the output just before it.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  std::string push(std::string_view piece);  // the text that is now final
  std::string finish();                      // held-back text, at the end of generation
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

class OutputText {
 public:
  // tok null: no text at all (token-id clients read the ids). strip_leading_space: chat replies,
  // whose template ends in "Assistant:" so the model's first piece usually starts with a space.
  OutputText(const Tokenizer* tok, std::vector<std::string> stops, bool strip_leading_space);
  std::string push(int32_t id);  // text to emit now; stopped() turns true on a stop string
  std::string finish();          // the rest, once generation ended (nothing after a stop)
  bool stopped() const { return stop_.stopped(); }

 private:
  std::string visible(std::string s);  // after the leading-space rule
  const Tokenizer* tok_;
  std::optional<StreamDecoder> dec_;
  StopMatcher stop_;
  bool strip_space_;
};

// s with every malformed or truncated UTF-8 sequence replaced by U+FFFD (JSON needs valid UTF-8).
std::string valid_utf8(std::string_view s);
bool is_valid_utf8(std::string_view s);

}  // namespace sky
