#pragma once
// Log-probabilities of tokens under the model's raw next-token distribution: log_softmax of the
// logits as the LM head produced them, before repetition penalty, temperature, top-k or top-p.
// That is what evaluation harnesses score, and it does not depend on how a request samples.
#include <cstdint>
#include <vector>

namespace sky {

// OpenAI's limit on alternatives per token is 5 (completions) or 20 (chat); both endpoints take 20.
inline constexpr int kMaxTopLogprobs = 20;

struct TopLogprob {
  int32_t token = -1;
  double logprob = 0;
};

struct TokenLogprob {
  int32_t token = -1;
  double logprob = 0;
  bool scored = true;           // false: a prompt's first token, which nothing predicts (null in JSON)
  std::vector<TopLogprob> top;  // the k most likely tokens, most likely first (ties: lower id first)
};

// `token` scored against one row of logits [V], with the k most likely tokens of that row.
// The normalizer is summed in double after subtracting the row's maximum (no overflow, and
// float rounding of the sum over a large vocabulary stays out of the result).
TokenLogprob score_token(const float* logits, int V, int32_t token, int k);

}  // namespace sky
