#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/threads.h"
#include "infer/sampler.h"
#include "model/transformer.h"

namespace sky::cli {

int cmd_generate(int argc, char** argv) {
  CLI::App app{"Generate tokens from a prompt (token ids) with a KV cache. Greedy unless --temperature > 0."};
  app.name("skymoe generate");
  std::string model, prompt;
  int max_tokens = 32, threads = 0;
  bool json_out = false, stop_eos = false;
  SamplerOptions so;
  app.add_option("--model", model, "model directory (HF layout)")->required();
  app.add_option("--prompt-ids", prompt, "prompt as comma-separated token ids, e.g. 1,5,9")->required();
  app.add_option("--max-tokens", max_tokens, "tokens to generate")->capture_default_str()->check(non_negative_int());
  app.add_option("--temperature", so.temperature, "sampling temperature (0 = greedy)")->capture_default_str();
  app.add_option("--top-p", so.top_p, "nucleus sampling mass")->capture_default_str();
  app.add_option("--top-k", so.top_k, "sample among the k most likely tokens (0 = all)")->capture_default_str();
  app.add_option("--seed", so.seed, "sampling seed")->capture_default_str();
  app.add_flag("--stop-at-eos", stop_eos, "stop when the model emits its eos token");
  app.add_option("--threads", threads, "threads (0 = all cores)");
  app.add_flag("--json", json_out, "print {\"prompt_ids\": [...], \"generated_ids\": [...]}");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  set_threads(threads);
  validate_sampler(so);
  std::vector<int32_t> ids = parse_id_list(prompt, "--prompt-ids");
  Model m = Model::load(model);
  check_tokens(ids.data(), ids.size(), m.cfg.vocab_size, "--prompt-ids");
  const int total = int(ids.size()) + max_tokens;
  SKY_CHECK(total <= m.cfg.max_position_embeddings, "prompt ({}) + --max-tokens ({}) exceeds max_position_embeddings {}",
            ids.size(), max_tokens, m.cfg.max_position_embeddings);
  KVCache cache;
  cache.init(m.cfg, total);
  Sampler sampler(so);
  std::vector<float> logits(m.cfg.vocab_size);
  std::vector<int32_t> out;
  if (max_tokens > 0) forward_cached(m, cache, ids.data(), int(ids.size()), logits.data());
  for (int i = 0; i < max_tokens; i++) {
    int32_t t = sampler.sample(logits.data(), m.cfg.vocab_size);
    out.push_back(t);
    if (!json_out) { fmt::print("{}{}", i ? "," : "", t); std::fflush(stdout); }
    if (stop_eos && t == m.cfg.eos_token_id) break;
    if (i + 1 < max_tokens) forward_cached(m, cache, &t, 1, logits.data());
  }
  if (json_out)
    fmt::print("{}\n", nlohmann::json{{"prompt_ids", ids}, {"generated_ids", out}}.dump());
  else
    fmt::print("\n");
  return 0;
}

}  // namespace sky::cli
