#pragma once
// Continuous-batching generation engine. Requests join and leave between steps; every step runs
// one batch_forward over the prefill chunks of newly admitted requests and the next token of every
// running one. A request is admitted only when its whole KV cache (prompt + max_tokens) fits the
// engine's budget, so a running sequence can never run out of cache.
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "infer/batch_forward.h"
#include "infer/infer_model.h"
#include "infer/logprobs.h"
#include "infer/sampler.h"

namespace sky {

struct GenParams {
  int max_tokens = 64;  // 0: only run the prompt (for its log-probabilities); ends with "length"
  SamplerOptions sampling;
  double repetition_penalty = 1.0;  // CTRL-style, over prompt and generated tokens; 1 = off
  bool stop_at_eos = true;
  // Optional: sees each step's raw logits [vocab] (before penalties and sampling); tests compare them.
  std::function<void(const float* logits, int vocab)> on_logits;
  // Log-probabilities (infer/logprobs.h) of each generated token (logprobs) and of every prompt
  // token (prompt_logprobs, which runs the LM head over all prompt rows), each with the
  // top_logprobs most likely tokens at its position.
  bool logprobs = false, prompt_logprobs = false;
  int top_logprobs = 0;
};

struct TokenEvent {
  int64_t id = 0;
  int32_t token = -1;        // -1 on a final event without a token
  bool done = false;
  std::string finish_reason;  // "stop" (eos), "length", "cancelled", "error"
  int prompt_tokens = 0, generated = 0;
  std::optional<TokenLogprob> logprob;        // of `token`, with GenParams::logprobs
  std::vector<TokenLogprob> prompt_logprobs;  // with GenParams::prompt_logprobs, on the request's first
                                              // event: one per prompt token, the first one unscored
};

// Called on the engine's thread; return false to cancel the request.
using TokenCallback = std::function<bool(const TokenEvent&)>;

struct EngineOptions {
  int max_batch = 64;               // sequences decoded together
  int64_t kv_budget_tokens = 65536;  // KV positions over all admitted sequences
};

struct EngineStats {
  int active = 0, waiting = 0;
  int64_t kv_used_tokens = 0, generated_tokens = 0, prompt_tokens = 0, steps = 0;
  int last_batch = 0;
};

class Engine {
 public:
  Engine(const InferModel& m, const EngineOptions& o);
  // Thread-safe. Throws sky::Error when the request can never run (empty prompt, bad token id,
  // prompt + max_tokens over the context or the whole KV budget).
  int64_t submit(std::vector<int32_t> prompt, const GenParams& p, TokenCallback cb);
  void cancel(int64_t id);  // thread-safe; takes effect at the next step
  // One step; returns false when there was nothing to do.
  bool step();
  void run_until_idle();
  // Engine thread: ends every request, waiting or running, with `reason` (e.g. "error" when a
  // tensor-parallel rank failed and no step can run any more).
  void fail_all(const char* reason);
  EngineStats stats() const;
  const InferModel& model() const { return m_; }

 private:
  struct Seq {
    int64_t id;
    std::vector<int32_t> tokens;  // prompt then generated
    int prompt_len, generated = 0;
    GenParams params;
    std::unique_ptr<Sampler> sampler;
    TokenCallback cb;
    SeqKV kv;
    bool cancelled = false;
    std::vector<TokenLogprob> prompt_lp;  // filled by the prefill, handed out with the first event
  };
  TokenEvent event(Seq& s, int32_t token, bool done, const char* reason);
  void finish(Seq& s, const char* reason, int32_t token, std::optional<TokenLogprob> lp = {});

  const InferModel& m_;
  EngineOptions o_;
  mutable std::mutex mu_;  // guards waiting_, cancels_, next_id_, stats_
  std::deque<std::unique_ptr<Seq>> waiting_;
  std::vector<int64_t> cancels_;
  std::vector<std::unique_ptr<Seq>> active_;  // engine thread only
  int64_t next_id_ = 1;
  int64_t kv_used_ = 0;
  EngineStats stats_;
  BatchScratch scratch_;
  std::vector<float> logits_, raw_;
};

// Applies the repetition penalty to logits in place (positive logits divided, negative multiplied).
void apply_repetition_penalty(float* logits, int V, const std::vector<int32_t>& history, double penalty);

}  // namespace sky
