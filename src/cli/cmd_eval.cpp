#include <fmt/format.h>

#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "backend/backend.h"
#include "io/token_data.h"
#include "model/transformer.h"

namespace sky::cli {

int cmd_eval(int argc, char** argv) {
  CLI::App app{"Mean next-token cross-entropy of a model on a token file (flat little-endian uint32 ids).\n"
               "Batch k reads B*S+1 consecutive tokens starting at k*B*S; row b's inputs are tokens\n"
               "[b*S, b*S+S) of that chunk and its targets the same shifted by one."};
  app.name("skymoe eval");
  std::string model, data, device = "cpu";
  int seq = 0, batch = 1, batches = 0, threads = 0;
  bool json_out = false, per_token = false;
  app.add_option("--model", model, "model directory (HF layout)")->required();
  app.add_option("--data", data, "token file (uint32 little-endian)")->required();
  app.add_option("--seq-len", seq, "sequence length S")->required()->check(positive_int());
  app.add_option("--batch-size", batch, "rows per batch B")->capture_default_str()->check(positive_int());
  app.add_option("--batches", batches, "batches to evaluate (0 = every full batch in the file)")
      ->capture_default_str()->check(non_negative_int());
  app.add_option("--threads", threads, "threads (0 = all cores)");
  add_device_flag(app, device);
  app.add_flag("--json", json_out, "print one JSON object: loss, tokens, batches, perplexity, seconds");
  app.add_flag("--per-token", per_token,
               "also print each target's log-probability, one JSON line per position before the summary: "
               "{\"batch\", \"row\", \"pos\" (of the input, 0-based), \"target\" (the id scored), \"logprob\"}");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  Backend& be = backend(device);
  be.set_threads(threads);
  Model m = Model::load(model);
  m.be = &be;
  SKY_CHECK(seq <= m.cfg.max_position_embeddings, "--seq-len {} exceeds the model's max_position_embeddings {}", seq,
            m.cfg.max_position_embeddings);
  TokenFile f = TokenFile::open(data, m.cfg.vocab_size);
  const uint64_t avail = sequential_batch_count(f.size(), batch, seq);
  SKY_CHECK(avail > 0, "{}: {} tokens are fewer than one batch needs ({} = B*S+1)", data, f.size(),
            uint64_t(batch) * seq + 1);
  SKY_CHECK(uint64_t(batches) <= avail, "--batches {} but {} holds only {} full batches of {}x{}", batches, data,
            avail, batch, seq);
  const uint64_t nb = batches > 0 ? uint64_t(batches) : avail;
  std::vector<int32_t> in(size_t(batch) * seq), tgt(size_t(batch) * seq);
  Activations acts;
  MoeOptions moe = moe_options(m.cfg, 0.0, DropPolicy::Prob, AuxLossType::None);
  double sum = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (uint64_t k = 0; k < nb; k++) {
    sequential_batch(f, f.all(), batch, seq, k, in.data(), tgt.data());
    sum += forward(m, acts, in.data(), tgt.data(), batch, seq, moe);
    // The position's cross-entropy is minus the target's log-probability (what a server's
    // echo + logprobs reports for the same ids, so the two can be compared token by token).
    if (per_token)
      for (int b = 0; b < batch; b++)
        for (int t = 0; t < seq; t++) {
          const size_t i = size_t(b) * seq + t;
          fmt::print("{}\n", nlohmann::json{{"batch", k}, {"row", b}, {"pos", t}, {"target", tgt[i]},
                                            {"logprob", -double(acts.losses[i])}}.dump());
        }
    if (!json_out && nb > 1 && isatty(2)) fmt::print(stderr, "\reval batch {}/{}  loss {:.4f}", k + 1, nb, sum / (k + 1));
  }
  if (!json_out && nb > 1 && isatty(2)) fmt::print(stderr, "\n");
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double loss = sum / nb;
  const uint64_t tokens = nb * uint64_t(batch) * seq;
  if (json_out) {
    fmt::print("{}\n", nlohmann::json{{"loss", loss}, {"tokens", tokens}, {"batches", nb}, {"perplexity", std::exp(loss)},
                                      {"seconds", secs}, {"tokens_per_s", tokens / secs}}.dump());
  } else {
    fmt::print("loss {:.6f}  perplexity {:.3f}  tokens {}  ({:.0f} tokens/s)\n", loss, std::exp(loss), tokens,
               tokens / secs);
  }
  return 0;
}

}  // namespace sky::cli
