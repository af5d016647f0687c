#include "infer/server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "core/error.h"
#include "dist/communicator.h"
#include "infer/api.h"
#include "infer/metrics.h"
#include "infer/output_text.h"

namespace sky {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string sse(const json& j) { return "data: " + dump_json(j) + "\n\n"; }

void send_json(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(dump_json(j), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  if (e.status == 503) res.set_header("Retry-After", "1");
  send_json(res, e.status, error_body(e));
}

// One generation request as both sides see it.
struct Job {
  struct Piece {
    std::string text;
    std::vector<int32_t> ids;  // only when the server has no tokenizer
    std::vector<ShownLogprob> logprobs;  // of the tokens whose text this piece completes
  };
  Job(const Tokenizer* tok, const GenRequest& r) : out(tok, r.stop, r.chat, r.echo ? r.prompt : std::vector<int32_t>{}) {}

  // Fixed before submit.
  Clock::time_point start = Clock::now();
  int prompt_tokens = 0;
  bool want_ids = false;
  bool logprobs = false;  // the response carries per-token log-probabilities
  int64_t id = -1;  // the engine's id, set right after submit (under the jobs mutex)

  // Engine thread only.
  OutputText out;
  bool seen_event = false;

  // Shared; guarded by mu.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Piece> pieces;  // produced, not yet taken by the handler
  bool done = false;
  std::string finish;        // the engine's reason, or "stop" after a stop string, or "error"
  std::string cancel_reason; // set when the server cancelled it: timeout | disconnect | shutdown
  int generated = 0;
  uint64_t failed_step = 0;  // "error": the engine failure (Impl::failed_steps count) that ended it

  // The finish_reason a client sees (call under mu, once done): a timeout reads as "length";
  // "shutdown" and "error" become error responses.
  std::string reason() const {
    if (finish != "cancelled") return finish;
    return cancel_reason == "timeout" ? "length" : cancel_reason == "shutdown" ? "shutdown" : "cancelled";
  }
};

// Per worker thread: httplib runs pre-routing, the handler, a streaming body and the logger of one
// request on the same thread, which is how the logger learns the request's start and token counts.
struct RequestRecord {
  bool active = false;
  Clock::time_point start;
  std::shared_ptr<Job> job;
};
thread_local RequestRecord tl_record;

const char* endpoint_label(const std::string& path) {
  for (const char* p : {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"})
    if (path == p) return p;
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/{id}";
  return "other";
}

// Methods a known path answers to (for 405), or "" for an unknown path.
const char* allowed_methods(const std::string& path) {
  if (path == "/v1/completions" || path == "/v1/chat/completions") return "POST";
  if (path == "/v1/models" || path == "/health" || path == "/metrics" || path.rfind("/v1/models/", 0) == 0)
    return "GET, HEAD";
  return "";
}

}  // namespace

struct Server::Impl {
  const InferModel& model;
  std::optional<Tokenizer> tok;
  ServerOptions o;
  ApiLimits limits;
  Engine engine;
  Metrics metrics;
  httplib::Server http;
  int port = -1;
  const int64_t created = unix_now();
  const uint64_t id_base = std::random_device{}() * 0x9E3779B97F4A7C15ull;
  std::atomic<uint64_t> id_counter{0};

  // Requests in flight (for shutdown) and the queue-limit count.
  std::mutex jobs_mu;
  std::condition_variable jobs_cv;
  std::set<std::shared_ptr<Job>> jobs;
  std::atomic<int> queued{0};
  std::atomic<bool> stopping{false}, run_active{false};

  // Engine thread.
  std::thread engine_thread;
  std::mutex wake_mu;
  std::condition_variable wake_cv;
  bool wake = false, engine_stop = false;
  std::atomic<bool> healthy{true};
  mutable std::mutex error_mu;
  mutable std::condition_variable error_cv;
  std::string last_error;
  uint64_t failed_steps = 0;
  std::atomic<bool> fatal{false};  // a collective failed: no step can run any more
  std::thread stopper;             // stops the server after a fatal failure

  Impl(const InferModel& m, std::optional<Tokenizer> t, ServerOptions opts)
      : model(m), tok(std::move(t)), o(std::move(opts)), engine(m, {o.max_batch, o.kv_budget_tokens}) {
    SKY_CHECK(o.max_tokens_limit >= 1, "max tokens limit must be >= 1, got {}", o.max_tokens_limit);
    SKY_CHECK(o.queue_limit >= 1, "queue limit must be >= 1, got {}", o.queue_limit);
    SKY_CHECK(o.timeout_s >= 0, "timeout must be >= 0 seconds, got {}", o.timeout_s);
    SKY_CHECK(o.max_body_bytes > 0, "max body bytes must be positive");
    if (tok)
      SKY_CHECK(tok->vocab_size() <= m.cfg.vocab_size,
                "tokenizer {} has {} pieces but the model's vocabulary has only {} ids", tok->path(), tok->vocab_size(),
                m.cfg.vocab_size);
    limits.model_name = o.model_name;
    limits.tok = tok ? &*tok : nullptr;
    limits.no_tokenizer_hint = o.tokenizer_hint;
    limits.vocab_size = m.cfg.vocab_size;
    limits.context = int(std::min<int64_t>(m.cfg.max_position_embeddings, o.kv_budget_tokens));
    SKY_CHECK(limits.context >= 2, "the context ({} positions) is too small to serve", limits.context);
    limits.max_prompt_tokens = o.max_prompt_tokens > 0 ? std::min(o.max_prompt_tokens, limits.context - 1) : limits.context - 1;
    limits.max_tokens_limit = o.max_tokens_limit;
    limits.add_bos = o.add_bos;
    routes();
  }

  // ---- engine side ------------------------------------------------------------------------------

  void wake_engine() {
    {
      std::lock_guard<std::mutex> g(wake_mu);
      wake = true;
    }
    wake_cv.notify_one();
  }

  void engine_loop() {
    engine.model().be->set_threads(o.threads);  // thread settings are per thread: set them where the math runs
    bool busy = false;
    const auto idle_for = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.idle_interval_s));
    for (;;) {
      bool idle = false;
      {
        std::unique_lock<std::mutex> lk(wake_mu);
        if (fatal) {
          // Requests that arrived since the failure: 503 as well, until stop_engine().
          wake_cv.wait_for(lk, std::chrono::milliseconds(20), [&] { return engine_stop; });
          if (engine_stop) return;
          lk.unlock();
          engine.fail_all("error");
          continue;
        }
        if (!busy) {
          if (o.idle)
            idle = !wake_cv.wait_for(lk, idle_for, [&] { return wake || engine_stop; });
          else
            wake_cv.wait(lk, [&] { return wake || engine_stop; });
        }
        if (engine_stop) return;
        wake = false;
      }
      try {
        if (idle) {
          o.idle();
          continue;
        }
        if (o.before_step) o.before_step();
        const bool worked = engine.step();
        if (worked) healthy = true;
        // step() also returns false when it only dropped cancelled sequences; requests still
        // waiting are admitted by the next step, so that is not a reason to sleep.
        busy = worked || engine.stats().waiting > 0;
      } catch (const CommTimeout& e) {
        fail(e.what());
      } catch (const std::exception& e) {
        // The engine has finished the requests of this step with "error"; waiting ones may still run.
        healthy = false;
        metrics.engine_error();
        {
          std::lock_guard<std::mutex> g(error_mu);
          last_error = e.what();
          failed_steps++;
        }
        error_cv.notify_all();
        fmt::print(stderr, "serve: engine step failed: {}\n", e.what());
        busy = true;
      }
    }
  }

  // Engine thread: another rank is gone. Every request gets 503 and the server stops.
  void fail(const std::string& what) {
    fmt::print(stderr, "serve: {}: stopping\n", what);
    fatal = true;
    healthy = false;
    metrics.engine_error();
    engine.fail_all("error");  // the waiting ones; the step already failed those it ran
    {
      std::lock_guard<std::mutex> g(error_mu);
      last_error = what;
      failed_steps++;
    }
    error_cv.notify_all();
    stopper = std::thread([this] { stop(); });  // stop() waits for handlers; not on this thread
  }

  void stop_engine() {
    {
      std::lock_guard<std::mutex> g(wake_mu);
      engine_stop = true;
    }
    wake_cv.notify_one();
    if (engine_thread.joinable()) engine_thread.join();
    if (stopper.joinable()) stopper.join();
  }

  // Engine thread: one token (or the end) of `j`. Never throws; false cancels the request.
  bool on_event(Job& j, const TokenEvent& ev) noexcept {
    try {
      if (!j.seen_event) {
        j.seen_event = true;
        queued--;
        if (ev.token >= 0) metrics.first_token(since(j.start));
      }
      Job::Piece p;
      if (!ev.prompt_logprobs.empty()) j.out.prompt_logprobs(ev.prompt_logprobs);
      const bool eos = ev.done && ev.finish_reason == "stop";  // the eos token itself shows nothing
      const TokenLogprob* lp = ev.logprob ? &*ev.logprob : nullptr;
      if (ev.token >= 0 && !eos) {
        p.text = j.out.push(ev.token, lp);
        if (j.want_ids) p.ids.push_back(ev.token);
      } else if (lp) {
        j.out.push_hidden(*lp);  // but its log-probability is listed
      }
      if (ev.done || j.out.stopped()) p.text += j.out.finish();
      p.logprobs = j.out.take_logprobs();
      uint64_t failed = 0;
      if (ev.done && ev.finish_reason == "error") {
        // Called from the failing step before its exception reaches engine_loop: mark the
        // server unhealthy now, so nobody who sees this request fail finds /health still "ok".
        healthy = false;
        std::lock_guard<std::mutex> g(error_mu);
        failed = failed_steps + 1;
      }
      std::lock_guard<std::mutex> g(j.mu);
      if (j.done) return false;
      if (!p.text.empty() || !p.ids.empty() || !p.logprobs.empty()) j.pieces.push_back(std::move(p));
      j.generated = ev.generated;
      if (ev.done) {
        j.done = true;
        j.finish = j.out.stopped() ? "stop" : ev.finish_reason;
        j.failed_step = failed;
      }
      j.cv.notify_all();
      return !j.out.stopped();
    } catch (...) {
      std::lock_guard<std::mutex> g(j.mu);
      j.done = true;
      j.finish = "error";
      j.cv.notify_all();
      return false;
    }
  }

  // ---- request side -----------------------------------------------------------------------------

  std::shared_ptr<Job> submit(const GenRequest& r) {
    auto j = std::make_shared<Job>(limits.tok, r);
    j->start = tl_record.active ? tl_record.start : Clock::now();
    j->prompt_tokens = int(r.prompt.size());
    j->want_ids = !tok;
    j->logprobs = r.logprobs;
    std::lock_guard<std::mutex> g(jobs_mu);
    if (stopping) throw ApiError(503, "The server is shutting down.", "", "shutting_down");
    if (queued >= o.queue_limit)
      throw ApiError(503, fmt::format("The server is busy: {} requests are already waiting. Retry later.", queued.load()),
                     "", "overloaded");
    queued++;
    try {
      j->id = engine.submit(r.prompt, r.gen, [this, j](const TokenEvent& ev) { return on_event(*j, ev); });
    } catch (const Error& e) {
      queued--;
      throw ApiError(400, e.what());
    } catch (...) {
      queued--;
      throw;
    }
    jobs.insert(j);
    wake_engine();
    return j;
  }

  // Cancels `j` once, for `reason`; the engine delivers its end at the next step.
  void cancel(Job& j, const char* reason) {
    {
      std::lock_guard<std::mutex> g(j.mu);
      if (j.done || !j.cancel_reason.empty()) return;
      j.cancel_reason = reason;
    }
    metrics.cancelled(reason);
    engine.cancel(j.id);
    wake_engine();
  }

  // The end of a request's life on the HTTP side: cancel it if still running, forget it.
  void release(const std::shared_ptr<Job>& j) {
    bool done;
    {
      std::lock_guard<std::mutex> g(j->mu);
      done = j->done;
    }
    if (!done) cancel(*j, "disconnect");
    {
      std::lock_guard<std::mutex> g(jobs_mu);
      jobs.erase(j);
    }
    jobs_cv.notify_all();
  }

  // Releases its job when the last owner (handler scope, or the streaming response) lets go.
  struct JobGuard {
    Impl* s;
    std::shared_ptr<Job> j;
    JobGuard(Impl* s, std::shared_ptr<Job> j) : s(s), j(std::move(j)) {}
    JobGuard(const JobGuard&) = delete;
    JobGuard& operator=(const JobGuard&) = delete;
    ~JobGuard() { s->release(j); }
  };

  Clock::time_point deadline(const Job& j) const {
    // Beyond ~30 years the arithmetic could overflow; such a timeout means "none" anyway.
    if (o.timeout_s <= 0 || o.timeout_s > 1e9) return Clock::time_point::max();
    return j.start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.timeout_s));
  }

  // The failure's message; engine_loop records it just after the request learns it failed.
  std::string engine_error_message(uint64_t failed_step) const {
    std::unique_lock<std::mutex> lk(error_mu);
    error_cv.wait_for(lk, std::chrono::seconds(1), [&] { return failed_steps >= failed_step; });
    return "The engine failed while generating" + (last_error.empty() ? std::string(".") : ": " + last_error);
  }

  // Maps an ended request that produced no response body to its error, if it is one.
  std::optional<ApiError> end_error(const std::string& reason, uint64_t failed_step) const {
    if (reason == "error") {
      std::string msg = engine_error_message(failed_step);  // waits until the failure is recorded
      if (fatal)  // set before the record: another rank failed, nothing can run any more
        return ApiError(503, "A tensor-parallel rank failed; the server is stopping. " + msg, "", "worker_failed");
      return ApiError(500, msg, "", "engine_error");
    }
    if (reason == "shutdown") return ApiError(503, "The server is shutting down.", "", "shutting_down");
    return std::nullopt;
  }

  ResponseMeta meta(bool chat) {
    return {fmt::format("{}-{:016x}", chat ? "chatcmpl" : "cmpl", id_base + id_counter++), o.model_name, unix_now(), chat};
  }

  void respond(httplib::Response& res, Job& j, const ResponseMeta& m) {
    const auto dl = deadline(j);
    std::unique_lock<std::mutex> lk(j.mu);
    while (!j.done) {
      if (j.cancel_reason.empty() && dl != Clock::time_point::max()) {
        if (j.cv.wait_until(lk, dl) == std::cv_status::timeout && !j.done) {
          lk.unlock();
          cancel(j, "timeout");
          lk.lock();
        }
      } else {
        j.cv.wait(lk);
      }
    }
    const std::string reason = j.reason();
    const uint64_t failed_step = j.failed_step;
    lk.unlock();
    if (auto e = end_error(reason, failed_step)) throw *e;
    lk.lock();
    std::string text;
    std::vector<int32_t> ids;
    std::vector<ShownLogprob> lps;
    for (const auto& p : j.pieces) {
      text += p.text;
      ids.insert(ids.end(), p.ids.begin(), p.ids.end());
      lps.insert(lps.end(), p.logprobs.begin(), p.logprobs.end());
    }
    const json lp = j.logprobs ? logprobs_json(m.chat, limits.tok, lps) : json(nullptr);
    send_json(res, 200, completion_body(m, text, j.want_ids ? &ids : nullptr, reason, j.prompt_tokens, j.generated, lp));
  }

  struct StreamState {
    std::shared_ptr<Job> job;
    std::shared_ptr<JobGuard> guard;  // released with the response, however the stream ends
    ResponseMeta meta;
    bool include_usage = false, started = false;
  };

  // One call of the chunked content provider: waits briefly for tokens, writes them as SSE events.
  bool pump(StreamState& st, httplib::DataSink& sink) {
    Job& j = *st.job;
    std::string out;
    if (!st.started) {
      st.started = true;
      if (st.meta.chat) out += sse(chunk_body(st.meta, "", nullptr, "", true));
    }
    std::deque<Job::Piece> pieces;
    bool done;
    std::string reason;
    uint64_t failed_step = 0;
    {
      std::unique_lock<std::mutex> lk(j.mu);
      j.cv.wait_for(lk, std::chrono::milliseconds(50), [&] { return !j.pieces.empty() || j.done; });
      pieces.swap(j.pieces);
      done = j.done;
      if (done) reason = j.reason(), failed_step = j.failed_step;
    }
    for (const auto& p : pieces) {
      const json lp = j.logprobs ? logprobs_json(st.meta.chat, limits.tok, p.logprobs) : json(nullptr);
      out += sse(chunk_body(st.meta, p.text, j.want_ids ? &p.ids : nullptr, "", false, lp));
    }
    if (done) {
      if (auto e = end_error(reason, failed_step)) {
        out += sse(error_body(*e));
      } else {
        out += sse(chunk_body(st.meta, "", nullptr, reason));
        if (st.include_usage) {
          json u = chunk_body(st.meta, "", nullptr, reason);
          u["choices"] = json::array();
          u["usage"] = usage_json(j.prompt_tokens, j.generated);
          out += sse(u);
        }
      }
      out += "data: [DONE]\n\n";
    }
    if (!out.empty() && !sink.write(out.data(), out.size())) {
      cancel(j, "disconnect");
      return false;
    }
    if (done) {
      sink.done();
      return true;
    }
    // Nothing to write: a peer that closed shows up as a socket that reads EOF.
    if (out.empty() && !sink.is_writable()) {
      cancel(j, "disconnect");
      return false;
    }
    if (Clock::now() >= deadline(j)) cancel(j, "timeout");  // its end arrives within a step
    return true;
  }

  void stream(httplib::Response& res, std::shared_ptr<Job> job, std::shared_ptr<JobGuard> guard, const ResponseMeta& m,
              bool include_usage) {
    auto st = std::make_shared<StreamState>();
    st->job = std::move(job);
    st->guard = std::move(guard);
    st->meta = m;
    st->include_usage = include_usage;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");  // proxies: do not buffer the stream
    res.set_chunked_content_provider("text/event-stream", [this, st](size_t, httplib::DataSink& sink) {
      // Runs outside httplib's handler try-block: an exception here would end the process.
      try {
        return pump(*st, sink);
      } catch (...) {
        cancel(*st->job, "disconnect");
        return false;
      }
    });
  }

  // The body, read here rather than by httplib so a chunked upload is held to the size limit too.
  std::string read_body(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader) {
    std::string body;
    bool too_big = false;
    const bool ok = reader([&](const char* d, size_t n) {
      if (body.size() + n > o.max_body_bytes) {
        too_big = true;
        return false;
      }
      body.append(d, n);
      return true;
    });
    if (too_big || res.status == 413) throw ApiError(413, too_large_message(), "", "request_too_large");
    if (!ok) throw ApiError(400, "The request body could not be read.", "", "invalid_body");
    return body;
  }

  std::string too_large_message() const {
    return fmt::format("The request body exceeds the server's limit of {} bytes.", o.max_body_bytes);
  }

  void generate(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader, bool chat) {
    try {
      const json body = parse_json_body(read_body(req, res, reader));
      const GenRequest r = chat ? parse_chat_request(body, limits) : parse_completion_request(body, limits);
      auto job = submit(r);
      tl_record.job = job;
      auto guard = std::make_shared<JobGuard>(this, job);
      if (r.stream)
        stream(res, job, std::move(guard), meta(chat), r.include_usage);
      else
        respond(res, *job, meta(chat));
    } catch (const ApiError& e) {
      send_error(res, e);
    } catch (const Error& e) {
      send_error(res, ApiError(400, e.what()));
    } catch (const std::exception& e) {
      send_error(res, ApiError(500, fmt::format("Internal error: {}", e.what()), "", "internal_error"));
    }
  }

  json model_json() const {
    return {{"id", o.model_name},         {"object", "model"}, {"created", created}, {"owned_by", "skymoe"},
            {"context_length", limits.context}};
  }

  ServingState state() const {
    ServingState s;
    s.engine = engine.stats();
    s.queued = std::max(0, queued.load());
    s.kv_budget = o.kv_budget_tokens;
    s.healthy = healthy && !stopping;
    return s;
  }

  void routes() {
    http.Post("/v1/completions", [this](const httplib::Request& q, httplib::Response& r, const httplib::ContentReader& c) {
      generate(q, r, c, false);
    });
    http.Post("/v1/chat/completions",
              [this](const httplib::Request& q, httplib::Response& r, const httplib::ContentReader& c) {
                generate(q, r, c, true);
              });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& r) {
      send_json(r, 200, {{"object", "list"}, {"data", json::array({model_json()})}});
    });
    http.Get(R"(/v1/models/(.+))", [this](const httplib::Request& q, httplib::Response& r) {
      if (q.matches[1] == o.model_name)
        send_json(r, 200, model_json());
      else
        send_error(r, ApiError(404, fmt::format("The model '{}' does not exist; this server serves '{}'.",
                                                std::string(q.matches[1]), o.model_name),
                               "model", "model_not_found"));
    });
    http.Get("/health", [this](const httplib::Request&, httplib::Response& r) {
      if (stopping) {
        send_json(r, 503, {{"status", "shutting_down"}});
      } else if (!healthy) {
        std::lock_guard<std::mutex> g(error_mu);
        send_json(r, 503, {{"status", "error"}, {"message", last_error}});
      } else {
        send_json(r, 200, {{"status", "ok"}});
      }
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& r) {
      r.set_content(metrics.render(state()), "text/plain; version=0.0.4; charset=utf-8");
    });

    // Statuses httplib sets itself (unknown route, oversized body, malformed request line) get the
    // same JSON error body as everything else; an unknown method on a known path becomes 405.
    http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                       httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // ours already
      ApiError e(res.status, fmt::format("Request failed with HTTP status {}.", res.status));
      if (res.status == 404) {
        if (const char* allow = allowed_methods(req.path); *allow) {
          res.set_header("Allow", allow);
          e = ApiError(405, fmt::format("Method {} is not allowed on {} (allowed: {}).", req.method, req.path, allow), "",
                       "method_not_allowed");
        } else {
          e = ApiError(404, fmt::format("Invalid URL ({} {}).", req.method, req.path), "", "not_found");
        }
      } else if (res.status == 413) {
        e = ApiError(413, too_large_message(), "", "request_too_large");
      } else if (res.status == 400) {
        e = ApiError(400, "Malformed HTTP request.", "", "bad_request");
      }
      send_error(res, e);
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown exception";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      send_error(res, ApiError(500, "Internal error: " + what, "", "internal_error"));
    });
    http.set_pre_routing_handler([](const httplib::Request&, httplib::Response&) {
      tl_record = {true, Clock::now(), nullptr};
      return httplib::Server::HandlerResponse::Unhandled;
    });
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) { log(req, res); });

    http.set_payload_max_length(o.max_body_bytes);
    http.set_tcp_nodelay(true);  // stream tokens as they come, not when Nagle decides
    // A waiting or streaming request holds a worker for its whole life.
    const int workers = std::clamp(o.max_batch + o.queue_limit + 4, 8, 512);
    http.new_task_queue = [workers] { return new httplib::ThreadPool(size_t(workers)); };
  }

  void log(const httplib::Request& req, const httplib::Response& res) {
    try {
      RequestRecord rec = std::exchange(tl_record, RequestRecord{});
      const double secs = rec.active ? since(rec.start) : 0.0;
      int pt = 0, ct = 0;
      if (rec.job) {
        std::lock_guard<std::mutex> g(rec.job->mu);
        pt = rec.job->prompt_tokens;
        ct = rec.job->generated;
      }
      const std::string ep = endpoint_label(req.path);
      metrics.request(ep, res.status, secs, ep == "/v1/completions" || ep == "/v1/chat/completions");
      if (o.log_requests)
        fmt::print(stderr, "{} {} {} prompt_tokens={} completion_tokens={} {:.3f}s\n", req.method, req.path, res.status,
                   pt, ct, secs);
    } catch (...) {
      // Logging must never take a request (or the worker thread) down.
    }
  }

  // ---- lifecycle --------------------------------------------------------------------------------

  int bind() {
    if (port >= 0) return port;
    if (o.port == 0) {
      port = http.bind_to_any_port(o.host);
      SKY_CHECK(port > 0, "cannot listen on {} (not a local address?)", o.host);
    } else {
      SKY_CHECK(http.bind_to_port(o.host, o.port), "cannot listen on {}:{} (port in use, or not a local address?)",
                o.host, o.port);
      port = o.port;
    }
    engine_thread = std::thread([this] { engine_loop(); });
    return port;
  }

  void run() {
    bind();
    run_active = true;
    if (!stopping) http.listen_after_bind();
    run_active = false;
    stop();
    stop_engine();
  }

  void stop() {
    std::vector<std::shared_ptr<Job>> running;
    {
      std::lock_guard<std::mutex> g(jobs_mu);
      if (!stopping.exchange(true)) running.assign(jobs.begin(), jobs.end());
    }
    for (auto& j : running) {
      cancel(*j, "shutdown");
      // Answer now rather than after the engine's next step, which may never come (under tensor
      // parallelism a step can be stuck in a collective with a rank that died).
      std::lock_guard<std::mutex> g(j->mu);
      if (!j->done) {
        j->done = true;
        j->finish = "cancelled";
        j->cv.notify_all();
      }
    }
    {
      // Let cancelled requests deliver their last response or stream event before the listener
      // closes (a closing server also cuts streams short); bounded, so stop() always returns.
      std::unique_lock<std::mutex> lk(jobs_mu);
      jobs_cv.wait_for(lk, std::chrono::seconds(2), [&] { return jobs.empty(); });
    }
    // run() may be between its stopping check and httplib's start: wait so stop() is not lost.
    while (run_active && !http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    http.stop();
  }
};

Server::Server(const InferModel& m, std::optional<Tokenizer> tok, ServerOptions o)
    : impl_(std::make_unique<Impl>(m, std::move(tok), std::move(o))) {}

Server::~Server() {
  impl_->stop();
  impl_->stop_engine();
}

int Server::bind() { return impl_->bind(); }
void Server::run() { impl_->run(); }
void Server::stop() { impl_->stop(); }
int Server::port() const { return impl_->port; }
EngineStats Server::engine_stats() const { return impl_->engine.stats(); }
std::string Server::metrics_text() const { return impl_->metrics.render(impl_->state()); }
uint64_t Server::cancelled(const std::string& reason) const { return impl_->metrics.cancelled_count(reason); }
bool Server::failed() const { return impl_->fatal; }
std::string Server::failure() const {
  std::lock_guard<std::mutex> g(impl_->error_mu);
  return impl_->last_error;
}

}  // namespace sky
