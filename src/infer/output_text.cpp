#include "infer/output_text.h"

#include <algorithm>
#include <utility>

#include "io/utf8.h"

namespace sky {

namespace {

// UTF-8 characters in valid UTF-8: the bytes that do not continue a character.
int64_t utf8_chars(std::string_view s) {
  return std::count_if(s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; });
}

}  // namespace

std::string valid_utf8(std::string_view s) { return utf8::repair(s); }

bool is_valid_utf8(std::string_view s) { return utf8::invalid_at(s) == std::string_view::npos; }

std::string StopMatcher::push(std::string_view piece) {
  if (stopped_) return "";
  held_.append(piece);
  size_t first = std::string::npos;
  for (const auto& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Hold back the longest tail that could still grow into a stop string. A match can then never
  // start inside text already released, so searching held_ alone is enough.
  size_t keep = 0;
  for (const auto& s : stops_)
    for (size_t k = std::min(s.size() - 1, held_.size()); k > keep; k--)
      if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::finish() {
  if (stopped_) return "";
  return std::exchange(held_, std::string());
}

OutputText::OutputText(const Tokenizer* tok, std::vector<std::string> stops, bool strip_leading_space,
                       const std::vector<int32_t>& echo)
    : tok_(tok), stop_(std::move(stops)), strip_space_(strip_leading_space) {
  // at_start = false: generated text continues the prompt, so a leading "▁" is a real space.
  if (tok_) dec_.emplace(*tok_, false);
  // The echo reads like decode(prompt): the dummy-prefix space of its first piece dropped.
  std::optional<StreamDecoder> d;
  if (tok_) d.emplace(*tok_, true);
  for (int32_t id : echo) {
    echo_offsets_.push_back(utf8_chars(echo_));
    if (d && id >= 0 && id < tok_->vocab_size()) echo_ += valid_utf8(d->push(id));
  }
  if (d) echo_ += valid_utf8(d->flush());
  echo_chars_ = utf8_chars(echo_);
}

std::string OutputText::echo_once() {
  if (echoed_) return "";
  echoed_ = true;
  return std::exchange(echo_, std::string());
}

void OutputText::release() {
  // Without a tokenizer there is no text to wait for.
  while (!pending_.empty() && (!tok_ || finished_ || pending_.front().start < released_)) {
    ready_.push_back(std::move(pending_.front().s));
    pending_.pop_front();
  }
}

void OutputText::push_hidden(const TokenLogprob& lp) {
  if (stopped()) return;
  pending_.push_back({{lp, echo_chars_ + produced_chars_}, produced_});
  release();
}

void OutputText::prompt_logprobs(const std::vector<TokenLogprob>& lps) {
  for (size_t i = 0; i < lps.size(); i++)
    ready_.push_back({lps[i], i < echo_offsets_.size() ? echo_offsets_[i] : 0});
}

std::vector<ShownLogprob> OutputText::take_logprobs() { return std::exchange(ready_, {}); }

std::string OutputText::visible(std::string s) {
  s = valid_utf8(s);  // the decoder checks structure only; this also catches overlong forms
  if (strip_space_ && !s.empty()) {
    if (s[0] == ' ') s.erase(0, 1);
    strip_space_ = false;
  }
  return s;
}

std::string OutputText::push(int32_t id, const TokenLogprob* lp) {
  std::string out = echo_once();
  if (stopped()) return out;
  if (lp) push_hidden(*lp);
  // A model vocabulary padded beyond the tokenizer's has ids with no text.
  if (!tok_ || id < 0 || id >= tok_->vocab_size()) return out;
  const std::string v = visible(dec_->push(id));
  produced_ += v.size();
  produced_chars_ += utf8_chars(v);
  const std::string r = stop_.push(v);
  released_ += r.size();
  release();
  if (stopped()) pending_.clear();  // their text is the stop string's, or after it
  return out + r;
}

std::string OutputText::finish() {
  std::string out = echo_once();
  if (tok_ && !stopped()) {
    const std::string v = visible(dec_->flush());
    produced_ += v.size();
    produced_chars_ += utf8_chars(v);
    std::string r = stop_.push(v);
    if (!stopped()) r += stop_.finish();
    released_ += r.size();
    out += r;
  }
  if (!stopped()) finished_ = true;  // everything left is out
  release();
  pending_.clear();  // after a stop: the tokens it cut off
  return out;
}

}  // namespace sky
