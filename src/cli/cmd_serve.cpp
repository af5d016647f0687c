#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <thread>

#include "cli/commands.h"
#include "core/error.h"
#include "infer/infer_model.h"
#include "dist/communicator.h"
#include "infer/server.h"
#include "infer/tp.h"
#include "io/chat_template.h"
#include "io/tokenizer.h"

namespace sky::cli {

namespace {

std::string dir_basename(const std::string& dir) {
  std::filesystem::path p(dir);
  if (!p.has_filename()) p = p.parent_path();  // "models/tiny/" -> "tiny"
  std::string name = p.filename().string();
  return name.empty() || name == "." ? "skymoe" : name;
}

}  // namespace

int cmd_serve(int argc, char** argv) {
  CLI::App app{"Serve a model over HTTP with an OpenAI-compatible API: /v1/completions, /v1/chat/completions "
               "(streaming or not), /v1/models, /health, /metrics. See docs/serving.md."};
  app.name("skymoe serve");
  std::string model, tokenizer, dtype = "auto";
  ServerOptions o;
  o.model_name.clear();  // set from the directory unless given
  bool no_bos = false, quiet = false;
  int64_t max_body = int64_t(o.max_body_bytes);
  app.add_option("--model", model, "model directory (HF layout)")->required();
  app.add_option("--tokenizer", tokenizer, "tokenizer.json or SentencePiece .model (default: <model>/tokenizer.json, "
                                            "else <model>/tokenizer.model, if present)");
  app.add_option("--host", o.host, "address to listen on")->capture_default_str();
  app.add_option("--port", o.port, "port (0 = pick a free one and print it)")->capture_default_str()->check(CLI::Range(0, 65535));
  app.add_option("--dtype", dtype, "weights: as stored, or converted on load")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "f32", "bf16", "fp8"}));
  std::string lm_head = "auto", kv_dtype = "f32";
  add_lm_head_flag(app, lm_head);
  add_kv_dtype_flag(app, kv_dtype);
  app.add_option("--threads", o.threads, "compute threads (0 = all cores)")->check(non_negative_int());
  std::string device = "cpu";
  add_device_flag(app, device);
  app.add_option("--max-batch", o.max_batch, "sequences decoded together")->capture_default_str()->check(positive_int());
  app.add_option("--kv-budget", o.kv_budget_tokens, "KV-cache positions over all running sequences")
      ->capture_default_str()
      ->check(positive_int());
  app.add_option("--max-prompt-tokens", o.max_prompt_tokens, "longest prompt accepted (0 = the context)")
      ->capture_default_str()
      ->check(non_negative_int());
  app.add_option("--max-tokens-limit", o.max_tokens_limit, "largest max_tokens a request may ask for")
      ->capture_default_str()
      ->check(positive_int());
  app.add_option("--max-body-bytes", max_body, "largest request body (413 beyond)")->capture_default_str()->check(positive_int());
  app.add_option("--timeout", o.timeout_s, "per-request limit in seconds; the request then ends with what it has, "
                                           "finish_reason \"length\" (0 = none)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--read-timeout", o.read_timeout_s,
                 "seconds a request's head and body may take to arrive, from its first byte (408 after)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--max-connections", o.max_connections,
                 "open connections; when full, the one slowest to send its request is dropped")
      ->capture_default_str()
      ->check(CLI::Range(16, 1 << 20));
  app.add_option("--model-name", o.model_name, "model id in /v1/models and requests (default: the directory's name)");
  app.add_option("--queue-limit", o.queue_limit, "requests waiting for their first token; 503 beyond")
      ->capture_default_str()
      ->check(positive_int());
  app.add_flag("--no-bos", no_bos, "do not start text prompts with the tokenizer's bos token");
  app.add_flag("--quiet", quiet, "no per-request log lines");
  TpFlags tpf;
  add_tp_flags(app, tpf);
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  o.max_body_bytes = size_t(max_body);
  o.add_bos = !no_bos;
  o.log_requests = !quiet;
  if (o.model_name.empty()) o.model_name = dir_basename(model);

  // SIGINT/SIGTERM go to one thread that asks the server to stop. They are blocked before any
  // thread exists (OpenMP's pool included), so every later thread inherits the mask and none of
  // them can be killed by the default action mid-request.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  std::atomic<Server*> server{nullptr};
  std::atomic<bool> finished{false}, stopping{false};
  std::thread signals([&] {
    while (!finished) {
      timespec ts{0, 200'000'000};
      const int s = sigtimedwait(&sigs, nullptr, &ts);
      if (s <= 0) continue;
      Server* srv = server.load();
      // Still loading, or a second signal while stopping: nothing more to wait for.
      if (!srv || stopping) std::_Exit(128 + s);
      stopping = true;
      fmt::print(stderr, "serve: {}, shutting down\n", strsignal(s));
      srv->stop();
    }
  });
  struct Join {  // the signal thread ends on every way out of this function
    std::atomic<bool>& f;
    std::thread& t;
    void operator()() {
      f = true;
      if (t.joinable()) t.join();
    }
    ~Join() { (*this)(); }
  } join{finished, signals};

  // Rank 0's collectives throw on a timeout instead of aborting: it answers its clients (503) first.
  Backend& be = backend(device);  // an unknown device fails before any weight is read
  InferModel im = load_infer_model(model, {dtype, true, lm_head, kv_dtype}, tpf, true);
  im.be = &be;
  if (im.tp && !im.tp->leader()) {  // rank 0 serves; this rank runs its slice of every step
    im.tp->follow(im);
    return 0;
  }
  if (im.tp) o.idle = [&im] { im.tp->heartbeat(); };
  std::optional<Tokenizer> tok;
  if (tokenizer.empty()) tokenizer = find_tokenizer(model);
  if (!tokenizer.empty()) {
    tok = Tokenizer::load(tokenizer);
  } else {
    o.tokenizer_hint =
        fmt::format(" (no tokenizer.json or tokenizer.model in {}; start the server with --tokenizer PATH)", model);
    fmt::print(stderr, "serve: no tokenizer: text prompts and chat will be refused, token-id prompts work\n");
  }
  std::string chat = "plain (built in)";
  if (tok) {
    if (auto t = ChatTemplate::from_model_dir(model)) {
      o.chat_template = std::make_shared<const ChatTemplate>(std::move(*t));
      chat = o.chat_template->origin();
    }
  }
  const std::string host = o.host;
  Server srv(im, std::move(tok), o);
  const int port = srv.bind();
  fmt::print(stderr, "serve: model '{}' ({}, {} weights, vocab {}, context {}), tokenizer {}, chat template {}\n", o.model_name,
             model, im.weight_dtype, im.cfg.vocab_size, im.cfg.max_position_embeddings,
             tokenizer.empty() ? "none" : tokenizer, chat);
  const bool v6 = host.find(':') != std::string::npos;
  fmt::print("listening on http://{}{}{}:{}\n", v6 ? "[" : "", host, v6 ? "]" : "", port);
  std::fflush(stdout);
  server = &srv;
  srv.run();
  join();  // before srv goes away: the signal thread may still be inside srv.stop()
  // Another rank failed: the others are gone or stuck in a collective, so end the whole job.
  if (srv.failed()) abort_job("serve: stopped after a tensor-parallel rank failed: " + srv.failure());
  if (im.tp) im.tp->finish();
  fmt::print(stderr, "serve: stopped\n");
  return 0;
}

}  // namespace sky::cli
