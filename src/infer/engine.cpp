#include "infer/engine.h"

#include <algorithm>
#include <unordered_set>

#include "core/error.h"

namespace sky {

void apply_repetition_penalty(float* logits, int V, const std::vector<int32_t>& history, double penalty) {
  if (penalty == 1.0) return;
  std::unordered_set<int32_t> seen(history.begin(), history.end());
  for (int32_t t : seen) {
    if (t < 0 || t >= V) continue;
    logits[t] = logits[t] > 0 ? float(logits[t] / penalty) : float(logits[t] * penalty);
  }
}

Engine::Engine(const InferModel& m, const EngineOptions& o) : m_(m), o_(o) {
  SKY_CHECK(o.max_batch > 0, "max batch must be positive, got {}", o.max_batch);
  SKY_CHECK(o.kv_budget_tokens > 0, "KV budget must be positive, got {}", o.kv_budget_tokens);
}

int64_t Engine::submit(std::vector<int32_t> prompt, const GenParams& p, TokenCallback cb) {
  const ModelConfig& c = m_.cfg;
  SKY_CHECK(!prompt.empty(), "the prompt is empty");
  SKY_CHECK(p.max_tokens >= 0, "max_tokens must be >= 0, got {}", p.max_tokens);
  SKY_CHECK(p.top_logprobs >= 0 && p.top_logprobs <= kMaxTopLogprobs, "top_logprobs must be in [0, {}], got {}",
            kMaxTopLogprobs, p.top_logprobs);
  for (size_t i = 0; i < prompt.size(); i++)
    SKY_CHECK(prompt[i] >= 0 && prompt[i] < c.vocab_size, "prompt token {} at position {} is outside the vocabulary [0, {})",
              prompt[i], i, c.vocab_size);
  const int64_t need = int64_t(prompt.size()) + p.max_tokens;
  SKY_CHECK(need <= c.max_position_embeddings, "prompt ({} tokens) + max_tokens ({}) exceeds the context of {}",
            prompt.size(), p.max_tokens, c.max_position_embeddings);
  SKY_CHECK(need <= o_.kv_budget_tokens, "prompt ({} tokens) + max_tokens ({}) exceeds the KV-cache budget of {} tokens",
            prompt.size(), p.max_tokens, o_.kv_budget_tokens);
  SKY_CHECK(p.repetition_penalty > 0, "repetition_penalty must be > 0, got {}", p.repetition_penalty);
  validate_sampler(p.sampling);
  auto s = std::make_unique<Seq>();
  s->tokens = std::move(prompt);
  s->prompt_len = int(s->tokens.size());
  s->params = p;
  s->sampler = std::make_unique<Sampler>(p.sampling);
  s->cb = std::move(cb);
  std::lock_guard<std::mutex> g(mu_);
  s->id = next_id_++;
  int64_t id = s->id;
  waiting_.push_back(std::move(s));
  return id;
}

void Engine::cancel(int64_t id) {
  std::lock_guard<std::mutex> g(mu_);
  cancels_.push_back(id);
}

TokenEvent Engine::event(Seq& s, int32_t token, bool done, const char* reason) {
  TokenEvent ev;
  ev.id = s.id;
  ev.token = token;
  ev.done = done;
  ev.finish_reason = reason;
  ev.prompt_tokens = s.prompt_len;
  ev.generated = s.generated;
  ev.prompt_logprobs = std::move(s.prompt_lp);  // once: moved-from leaves it empty
  s.prompt_lp.clear();
  return ev;
}

void Engine::finish(Seq& s, const char* reason, int32_t token, std::optional<TokenLogprob> lp) {
  TokenEvent ev = event(s, token, true, reason);
  ev.logprob = std::move(lp);
  if (s.cb) s.cb(ev);
  s.cb = nullptr;
}

bool Engine::step() {
  std::vector<int64_t> cancels;
  std::vector<std::unique_ptr<Seq>> dropped;  // finished after the lock: callbacks may take theirs
  {
    // Admit waiting requests in arrival order while they fit; reserve their whole KV cache.
    std::lock_guard<std::mutex> g(mu_);
    cancels.swap(cancels_);
    for (int64_t id : cancels)
      for (auto it = waiting_.begin(); it != waiting_.end(); ++it)
        if ((*it)->id == id) {
          dropped.push_back(std::move(*it));
          waiting_.erase(it);
          break;
        }
    while (!waiting_.empty() && int(active_.size()) < o_.max_batch) {
      Seq& s = *waiting_.front();
      const int cap = s.prompt_len + s.params.max_tokens;
      if (kv_used_ + cap > o_.kv_budget_tokens) break;
      s.kv.init(m_.cfg, cap, m_.kv_bf16);
      kv_used_ += cap;
      active_.push_back(std::move(waiting_.front()));
      waiting_.pop_front();
    }
  }
  for (auto& s : dropped) finish(*s, "cancelled", -1);
  for (int64_t id : cancels)
    for (auto& s : active_)
      if (s->id == id) s->cancelled = true;
  // Drop cancelled sequences before spending compute on them.
  for (auto& s : active_)
    if (s->cancelled && s->cb) finish(*s, "cancelled", -1);
  auto gone = [&](const std::unique_ptr<Seq>& s) {
    if (s->cb) return false;
    kv_used_ -= s->kv.capacity;
    return true;
  };
  active_.erase(std::remove_if(active_.begin(), active_.end(), gone), active_.end());
  if (active_.empty()) {
    // Cancelled sequences may have held the KV budget a waiting request needs: report work left so
    // the caller steps again and admits it.
    std::lock_guard<std::mutex> g(mu_);
    stats_.active = 0;
    stats_.waiting = int(waiting_.size());
    stats_.kv_used_tokens = kv_used_;
    return !waiting_.empty();
  }

  const int V = m_.cfg.vocab_size;
  std::vector<BatchRow> rows;
  RowLogits prompt_rows;
  for (size_t i = 0; i < active_.size(); i++) {
    Seq& s = *active_[i];
    const int done = s.kv.len;
    rows.push_back({&s.kv, s.tokens.data() + done, int(s.tokens.size()) - done});
    if (s.params.prompt_logprobs && done == 0) {
      // Position j predicts prompt token j + 1; the last position (the first generated token's)
      // is scored with the sampled token below. Nothing predicts token 0.
      prompt_rows.want.resize(active_.size());
      prompt_rows.want[i] = 1;
      s.prompt_lp.assign(size_t(s.prompt_len), {});
      s.prompt_lp[0] = {s.tokens[0], 0.0, false, {}};
    }
  }
  prompt_rows.fn = [&](int i, int j, const float* lg) {
    Seq& s = *active_[size_t(i)];
    s.prompt_lp[size_t(j) + 1] = score_token(lg, V, s.tokens[size_t(j) + 1], s.params.top_logprobs);
  };
  logits_.resize(size_t(rows.size()) * V);
  int64_t prompt_toks = 0;
  for (auto& s : active_)
    if (s->kv.len == 0) prompt_toks += s->prompt_len;
  try {
    batch_forward(m_, rows, logits_.data(), scratch_, nullptr, prompt_rows.want.empty() ? nullptr : &prompt_rows);
  } catch (const std::exception& e) {
    for (auto& s : active_) finish(*s, "error", -1);
    active_.clear();
    kv_used_ = 0;
    throw;
  }

  int64_t produced = 0;
  for (size_t i = 0; i < active_.size(); i++) {
    Seq& s = *active_[i];
    if (s.params.max_tokens == 0) {  // the prompt alone was asked for
      finish(s, "length", -1);
      continue;
    }
    float* lg = logits_.data() + i * V;
    if (s.params.on_logits) s.params.on_logits(lg, V);
    // Penalty and sampler change the row in place; log-probabilities are of the raw one.
    if (s.params.logprobs) raw_.assign(lg, lg + V);
    apply_repetition_penalty(lg, V, s.tokens, s.params.repetition_penalty);
    const int32_t t = s.sampler->sample(lg, V);
    std::optional<TokenLogprob> lp;
    if (s.params.logprobs) lp = score_token(raw_.data(), V, t, s.params.top_logprobs);
    s.tokens.push_back(t);
    s.generated++;
    produced++;
    const bool eos = s.params.stop_at_eos && t == m_.cfg.eos_token_id;
    const bool length = s.generated >= s.params.max_tokens;
    if (eos || length) {
      finish(s, eos ? "stop" : "length", t, std::move(lp));
      continue;
    }
    TokenEvent ev = event(s, t, false, "");
    ev.logprob = std::move(lp);
    if (!s.cb(ev)) finish(s, "cancelled", -1);
  }
  const int batch = int(active_.size());
  active_.erase(std::remove_if(active_.begin(), active_.end(), gone), active_.end());
  std::lock_guard<std::mutex> g(mu_);
  stats_.active = int(active_.size());
  stats_.waiting = int(waiting_.size());
  stats_.kv_used_tokens = kv_used_;
  stats_.generated_tokens += produced;
  stats_.prompt_tokens += prompt_toks;
  stats_.steps++;
  stats_.last_batch = batch;
  return true;
}

void Engine::run_until_idle() {
  while (step()) {
  }
}

void Engine::fail_all(const char* reason) {
  std::deque<std::unique_ptr<Seq>> waiting;
  {
    std::lock_guard<std::mutex> g(mu_);
    waiting.swap(waiting_);
    cancels_.clear();
  }
  for (auto& s : waiting) finish(*s, reason, -1);
  for (auto& s : active_)
    if (s->cb) finish(*s, reason, -1);
  active_.clear();
  kv_used_ = 0;
  std::lock_guard<std::mutex> g(mu_);
  stats_.active = stats_.waiting = 0;
  stats_.kv_used_tokens = 0;
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> g(mu_);
  return stats_;
}

}  // namespace sky
