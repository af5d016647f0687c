#pragma once
// What a client sees of a generation: token ids turned into text one at a time (whole UTF-8
// characters only), cut at the first stop string. The same object produces both the streamed
// pieces and the non-streaming text, so the two always agree.
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "infer/logprobs.h"
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

// A token's log-probabilities as the client gets them, with where the token's text starts in the
// choice's text, in characters (OpenAI's text_offset).
struct ShownLogprob {
  TokenLogprob lp;
  int64_t text_offset = 0;
};

class OutputText {
 public:
  // tok null: no text at all (token-id clients read the ids). strip_leading_space: chat replies,
  // whose template ends in "Assistant:" so the model's first piece usually starts with a space.
  // echo: prompt ids whose text opens the output (completions' "echo"), ahead of the generated
  // text and outside stop-string matching.
  OutputText(const Tokenizer* tok, std::vector<std::string> stops, bool strip_leading_space,
             const std::vector<int32_t>& echo = {});
  // Text to emit now; stopped() turns true on a stop string. lp: the token's log-probabilities.
  std::string push(int32_t id, const TokenLogprob* lp = nullptr);
  std::string finish();  // the rest, once generation ended (nothing after a stop)
  bool stopped() const { return stop_.stopped(); }

  // Log-probabilities of a token that shows no text (eos) and of the echoed prompt's tokens.
  void push_hidden(const TokenLogprob& lp);
  void prompt_logprobs(const std::vector<TokenLogprob>& lps);
  // The log-probabilities whose tokens' text is out, in order: a token's entry waits while a stop
  // string might still cut its text, and the tokens a stop string cuts off never come out, so
  // the entries always match the text the client has.
  std::vector<ShownLogprob> take_logprobs();

 private:
  std::string visible(std::string s);  // after the leading-space rule
  std::string echo_once();             // the echoed prompt's text, on the first call
  void release();
  const Tokenizer* tok_;
  std::optional<StreamDecoder> dec_;
  StopMatcher stop_;
  bool strip_space_;
  std::string echo_;
  std::vector<int64_t> echo_offsets_;  // of each echoed token, in characters
  int64_t echo_chars_ = 0;
  bool echoed_ = false, finished_ = false;
  // Log-probabilities waiting for their text: `start` is the token's first byte in the visible
  // text, which is out once the stop matcher has released more than that.
  struct Pending {
    ShownLogprob s;
    size_t start;
  };
  std::deque<Pending> pending_;
  std::vector<ShownLogprob> ready_;
  size_t produced_ = 0, released_ = 0;  // visible bytes made, and let out by the stop matcher
  int64_t produced_chars_ = 0;
};

// s with every malformed or truncated UTF-8 sequence replaced by U+FFFD (JSON needs valid UTF-8).
std::string valid_utf8(std::string_view s);
bool is_valid_utf8(std::string_view s);

}  // namespace sky
