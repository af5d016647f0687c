#pragma once
// `skymoe serve`: an OpenAI-compatible HTTP server over the continuous-batching Engine.
//
// Threads: one front thread multiplexes every connection (infer/http_front.h: reading, writing,
// deadlines); a few handler threads parse complete requests and submit them; one engine thread
// runs Engine::step() in a loop, sleeps on a condition variable while there is nothing to do, and
// turns each token into response bytes for the front on the spot. No thread waits on a client.
//
// Choices (docs/serving.md has the user-facing version):
//  - per-request timeout: the request is cancelled and answers with what it produced so far and
//    finish_reason "length", streaming or not (a stream has already sent its 200).
//  - a client that goes away (reset, closed or half-closed connection, or output it does not read)
//    has its request cancelled at the next engine step.
//  - stop(): new requests get 503, running ones are cancelled (503 JSON, or an error event that
//    ends the stream), then the listener closes; run() returns after joining the engine thread.
//  - a failed engine step fails the requests it was running (500) and makes /health answer 503
//    until a later step succeeds; the server keeps serving.
//  - a collective that times out (CommTimeout: a tensor-parallel rank died or hangs) is fatal:
//    every request in flight or waiting gets 503, the server stops, and failed() tells the caller,
//    which then ends the job.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "infer/engine.h"
#include "infer/infer_model.h"
#include "io/tokenizer.h"

namespace sky {

class ChatTemplate;  // io/chat_template.h

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (bind() returns it)
  std::string model_name = "skymoe";  // the id /v1/models reports and requests must name (if any)
  int threads = 0;                    // OpenMP threads of the engine thread; 0 = default
  int max_batch = 16;                 // sequences decoded together
  int64_t kv_budget_tokens = 32768;   // KV positions over all admitted sequences
  int max_prompt_tokens = 0;          // 0: the context minus one
  int max_tokens_limit = 4096;        // cap on a request's max_tokens
  size_t max_body_bytes = size_t(1) << 20;
  double timeout_s = 600;             // per request; 0 = none
  double read_timeout_s = 30;         // a request's head and body must arrive within this (408)
  int max_connections = 4096;         // open connections; a full table drops its slowest reader
  int queue_limit = 64;               // requests waiting for their first token; more get 503
  bool add_bos = true;                // text prompts start with the tokenizer's bos
  bool log_requests = true;           // one line per request on stderr
  std::function<void(const std::string&)> log_line;  // where those lines go instead (tests)
  std::string tokenizer_hint;         // appended to "this model has no tokenizer" errors
  // The model's chat template for /v1/chat/completions (null: the built-in plain template).
  std::shared_ptr<const ChatTemplate> chat_template;
  // Tests: runs on the engine thread before every step (e.g. sleeps, to make generation slow).
  std::function<void()> before_step;
  // Runs on the engine thread every idle_interval_s while there is nothing to do (tensor
  // parallelism: rank 0's heartbeat to the other ranks).
  std::function<void()> idle;
  double idle_interval_s = 1.0;
};

class Server {
 public:
  // `m` must outlive the server. Throws sky::Error on bad options.
  Server(const InferModel& m, std::optional<Tokenizer> tok, ServerOptions o);
  ~Server();  // stop(), then joins the engine thread; run() must have returned
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int bind();   // binds host:port and starts the engine thread; returns the port. Throws sky::Error.
  void run();   // serves until stop() (binds first if needed); joins the engine thread on return
  void stop();  // thread-safe, idempotent; not async-signal-safe (call it from a normal thread)

  int port() const;
  EngineStats engine_stats() const;
  std::string metrics_text() const;
  uint64_t cancelled(const std::string& reason) const;  // disconnect | timeout | shutdown
  // After run(): whether it stopped because a collective failed, and the message.
  bool failed() const;
  std::string failure() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace sky
