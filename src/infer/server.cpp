#include "infer/server.h"

#include <fmt/format.h>

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
#include "infer/http_front.h"
#include "infer/metrics.h"
#include "infer/output_text.h"
#include "io/chat_template.h"

namespace sky {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string sse(const json& j) { return "data: " + dump_json(j) + "\n\n"; }

void send_json(http::Exchange& ex, int status, const json& j, const http::Headers& extra = {}) {
  ex.respond(status, "application/json", dump_json(j), extra);
}

void send_error(http::Exchange& ex, const ApiError& e, http::Headers extra = {}) {
  if (e.status == 503) extra.emplace_back("Retry-After", "1");
  send_json(ex, e.status, error_body(e), extra);
}

// One generation request as both sides see it. The engine thread turns its tokens into response
// bytes on the spot; nothing waits on it.
struct Job {
  Job(const Tokenizer* tok, const GenRequest& r, std::shared_ptr<http::Exchange> ex)
      : stop_ids(r.stop_ids), out(tok, r.stop, r.chat, r.echo ? r.prompt : std::vector<int32_t>{}), ex(std::move(ex)) {}

  // Fixed before submit.
  Clock::time_point start = Clock::now();
  Clock::time_point deadline = Clock::time_point::max();
  int prompt_tokens = 0;
  bool want_ids = false;
  bool stream = false, include_usage = false;
  bool logprobs = false;  // the response carries per-token log-probabilities
  ResponseMeta meta;
  int64_t id = -1;  // the engine's id, set right after submit (under the jobs mutex)
  // End-of-turn tokens of the chat template: each ends the reply like eos (shows no text).
  const std::vector<int32_t> stop_ids;

  // Engine thread only.
  OutputText out;
  bool seen_event = false;
  bool stop_token = false;  // a stop_ids token came

  // Shared; guarded by mu (which also orders what goes to the exchange).
  std::mutex mu;
  const std::shared_ptr<http::Exchange> ex;
  bool started = false;      // streaming: the first chunk is out
  std::string text;          // not streaming: the answer so far
  std::vector<int32_t> ids;  // not streaming, no tokenizer
  std::vector<ShownLogprob> lps;  // not streaming, with logprobs
  bool done = false;         // the engine (or stop()) ended it
  bool answered = false;     // its last bytes are with the exchange
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
  int port = -1;
  const int64_t created = unix_now();
  const uint64_t id_base = std::random_device{}() * 0x9E3779B97F4A7C15ull;
  std::atomic<uint64_t> id_counter{0};

  // Requests in flight (for shutdown and deadlines) and the queue-limit count.
  std::mutex jobs_mu;
  std::condition_variable jobs_cv;
  std::set<std::shared_ptr<Job>> jobs;
  std::atomic<int> queued{0};
  std::atomic<bool> stopping{false};

  // Engine thread.
  std::thread engine_thread;
  std::mutex wake_mu;
  std::condition_variable wake_cv;
  bool wake = false, engine_stop = false;
  std::atomic<bool> healthy{true};
  mutable std::mutex error_mu;
  std::string last_error;
  std::atomic<bool> fatal{false};  // a collective failed: no step can run any more
  std::thread stopper;             // stops the server after a fatal failure
  // Requests the engine ended with "error": answered once the failure's message is recorded.
  std::vector<std::shared_ptr<Job>> errored;

  std::unique_ptr<http::Front> front;  // last: its handler threads use everything above

  Impl(const InferModel& m, std::optional<Tokenizer> t, ServerOptions opts)
      : model(m), tok(std::move(t)), o(std::move(opts)), engine(m, {o.max_batch, o.kv_budget_tokens}) {
    SKY_CHECK(o.max_tokens_limit >= 1, "max tokens limit must be >= 1, got {}", o.max_tokens_limit);
    SKY_CHECK(o.queue_limit >= 1, "queue limit must be >= 1, got {}", o.queue_limit);
    SKY_CHECK(o.timeout_s >= 0, "timeout must be >= 0 seconds, got {}", o.timeout_s);
    SKY_CHECK(o.read_timeout_s > 0, "read timeout must be > 0 seconds, got {}", o.read_timeout_s);
    SKY_CHECK(o.max_connections >= 16, "max connections must be >= 16, got {}", o.max_connections);
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
    limits.chat_template = o.chat_template.get();
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
          answer_errored();
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
        }
        fmt::print(stderr, "serve: engine step failed: {}\n", e.what());
        busy = true;
      }
      answer_errored();
    }
  }

  // Engine thread: another rank is gone. Every request gets 503 and the server stops.
  void fail(const std::string& what) {
    fmt::print(stderr, "serve: {}: stopping\n", what);
    {
      std::lock_guard<std::mutex> g(error_mu);
      last_error = what;
    }
    fatal = true;
    healthy = false;
    metrics.engine_error();
    engine.fail_all("error");  // the waiting ones; the step already failed those it ran
    answer_errored();
    stopper = std::thread([this] { stop(); });  // stop() waits for answers; not on this thread
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

  void answer_errored() {
    std::vector<std::shared_ptr<Job>> v;
    v.swap(errored);
    for (auto& j : v) {
      std::lock_guard<std::mutex> g(j->mu);
      answer(*j);
    }
  }

  // Engine thread: one token (or the end) of `j`. Never throws; false cancels the request.
  bool on_event(const std::shared_ptr<Job>& jp, const TokenEvent& ev) noexcept {
    Job& j = *jp;
    try {
      if (!j.seen_event) {
        j.seen_event = true;
        queued--;
        if (ev.token >= 0) metrics.first_token(since(j.start));
      }
      std::string text;
      if (!ev.prompt_logprobs.empty()) j.out.prompt_logprobs(ev.prompt_logprobs);
      const bool eos = ev.done && ev.finish_reason == "stop";  // the eos token itself shows nothing
      if (ev.token >= 0 && !eos && std::find(j.stop_ids.begin(), j.stop_ids.end(), ev.token) != j.stop_ids.end())
        j.stop_token = true;  // the engine's "cancelled" event that follows ends it as "stop"
      const bool with_token = ev.token >= 0 && !eos && !j.stop_token;
      const TokenLogprob* lp = ev.logprob ? &*ev.logprob : nullptr;
      if (with_token)
        text = j.out.push(ev.token, lp);
      else if (lp)
        j.out.push_hidden(*lp);  // but its log-probability is listed
      if (ev.done || j.out.stopped()) text += j.out.finish();
      std::vector<ShownLogprob> lps = j.out.take_logprobs();
      if (ev.done && ev.finish_reason == "error") healthy = false;  // before anyone sees the 500
      std::lock_guard<std::mutex> g(j.mu);
      if (j.done) return false;
      j.generated = ev.generated;
      j.ex->completion_tokens = ev.generated;
      std::vector<int32_t> ids;
      if (with_token && j.want_ids) ids.push_back(ev.token);
      if (j.stream) {
        if (!text.empty() || !ids.empty() || !lps.empty()) {
          const json lpj = j.logprobs ? logprobs_json(j.meta.chat, limits.tok, lps) : json(nullptr);
          j.ex->send(sse(chunk_body(j.meta, text, j.want_ids ? &ids : nullptr, "", false, lpj)));
        }
      } else {
        j.text += text;
        j.ids.insert(j.ids.end(), ids.begin(), ids.end());
        j.lps.insert(j.lps.end(), lps.begin(), lps.end());
      }
      if (ev.done) {
        j.done = true;
        j.finish = j.out.stopped() || j.stop_token ? "stop" : ev.finish_reason;
        if (j.finish == "error")
          errored.push_back(jp);  // the failure's message is recorded after this step
        else
          answer(j);
      }
      if (j.ex->gone() && !j.done && j.cancel_reason.empty()) {
        // The client left and the engine saw it first: counted here, under mu, so that cancel()
        // from the front's gone callback does not count it again (or miss it).
        j.cancel_reason = "disconnect";
        metrics.cancelled("disconnect");
      }
      return !j.out.stopped() && !j.stop_token && !j.ex->gone();
    } catch (...) {
      std::lock_guard<std::mutex> g(j.mu);
      if (!j.done) {
        j.done = true;
        j.finish = "error";
        errored.push_back(jp);
      }
      return false;
    }
  }

  // ---- request side -----------------------------------------------------------------------------

  void submit(const std::shared_ptr<Job>& j, const GenRequest& r) {
    std::lock_guard<std::mutex> g(jobs_mu);
    if (stopping) throw ApiError(503, "The server is shutting down.", "", "shutting_down");
    if (queued >= o.queue_limit)
      throw ApiError(503, fmt::format("The server is busy: {} requests are already waiting. Retry later.", queued.load()),
                     "", "overloaded");
    queued++;
    try {
      j->id = engine.submit(r.prompt, r.gen, [this, j](const TokenEvent& ev) { return on_event(j, ev); });
    } catch (const Error& e) {
      queued--;
      throw ApiError(400, e.what());
    } catch (...) {
      queued--;
      throw;
    }
    jobs.insert(j);
    wake_engine();
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

  // Front thread, every tick: requests past their deadline are cancelled; the engine ends them
  // with what they have.
  void check_deadlines() {
    const auto now = Clock::now();
    std::vector<std::shared_ptr<Job>> late;
    {
      std::lock_guard<std::mutex> g(jobs_mu);
      for (const auto& j : jobs)
        if (now >= j->deadline) late.push_back(j);
    }
    for (auto& j : late) cancel(*j, "timeout");
  }

  Clock::time_point deadline_of(Clock::time_point start) const {
    // Beyond ~30 years the arithmetic could overflow; such a timeout means "none" anyway.
    if (o.timeout_s <= 0 || o.timeout_s > 1e9) return Clock::time_point::max();
    return start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.timeout_s));
  }

  // Maps an ended request to its error, if it is one.
  std::optional<ApiError> end_error(const std::string& reason) const {
    if (reason == "error") {
      std::string msg;
      {
        std::lock_guard<std::mutex> g(error_mu);
        msg = "The engine failed while generating" + (last_error.empty() ? std::string(".") : ": " + last_error);
      }
      if (fatal)  // another rank failed, nothing can run any more
        return ApiError(503, "A tensor-parallel rank failed; the server is stopping. " + msg, "", "worker_failed");
      return ApiError(500, msg, "", "engine_error");
    }
    if (reason == "shutdown") return ApiError(503, "The server is shutting down.", "", "shutting_down");
    return std::nullopt;
  }

  // The last bytes of an ended request (under j.mu), then it is forgotten.
  void answer(Job& j) {
    if (j.answered) return;
    j.answered = true;
    const std::string reason = j.reason();
    const auto err = end_error(reason);
    http::Exchange& ex = *j.ex;
    if (j.stream) {
      std::string out;
      if (err) {
        out += sse(error_body(*err));
      } else {
        out += sse(chunk_body(j.meta, "", nullptr, reason));
        if (j.include_usage) {
          json u = chunk_body(j.meta, "", nullptr, reason);
          u["choices"] = json::array();
          u["usage"] = usage_json(j.prompt_tokens, j.generated);
          out += sse(u);
        }
      }
      out += "data: [DONE]\n\n";
      ex.send(out);
      ex.end_stream();
    } else if (err) {
      send_error(ex, *err);
    } else {
      const json lpj = j.logprobs ? logprobs_json(j.meta.chat, limits.tok, j.lps) : json(nullptr);
      send_json(ex, 200,
                completion_body(j.meta, j.text, j.want_ids ? &j.ids : nullptr, reason, j.prompt_tokens, j.generated, lpj));
    }
    std::shared_ptr<Job> keep;
    {
      std::lock_guard<std::mutex> g(jobs_mu);
      for (auto it = jobs.begin(); it != jobs.end(); ++it)
        if (it->get() == &j) {
          keep = *it;  // destroyed after the lock: j.mu is still held by our caller
          jobs.erase(it);
          break;
        }
    }
    jobs_cv.notify_all();
  }

  ResponseMeta meta(bool chat) {
    return {fmt::format("{}-{:016x}", chat ? "chatcmpl" : "cmpl", id_base + id_counter++), o.model_name, unix_now(), chat};
  }

  void generate(const std::shared_ptr<http::Exchange>& ex, bool chat) {
    const json body = parse_json_body(ex->request().body);
    const GenRequest r = chat ? parse_chat_request(body, limits) : parse_completion_request(body, limits);
    auto j = std::make_shared<Job>(limits.tok, r, ex);
    j->logprobs = r.logprobs;
    j->start = ex->start();
    j->deadline = deadline_of(j->start);
    j->prompt_tokens = int(r.prompt.size());
    j->want_ids = !tok;
    j->stream = r.stream;
    j->include_usage = r.include_usage;
    j->meta = meta(chat);
    ex->prompt_tokens = j->prompt_tokens;
    {
      // Held across submit so the engine's first event waits until the stream has begun.
      std::lock_guard<std::mutex> g(j->mu);
      submit(j, r);
      if (r.stream) {
        ex->begin_stream("text/event-stream", {{"Cache-Control", "no-cache"}, {"X-Accel-Buffering", "no"}});
        if (chat) ex->send(sse(chunk_body(j->meta, "", nullptr, "", true)));
      }
    }
    std::weak_ptr<Job> wj = j;
    ex->on_gone([this, wj] {
      if (auto jj = wj.lock()) cancel(*jj, "disconnect");
    });
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

  // A handler thread: one complete request. Answers now, or (generation) hands it to the engine.
  void handle(const std::shared_ptr<http::Exchange>& ex) {
    const http::Request& q = ex->request();
    const std::string& path = q.path;
    const bool get = q.method == "GET" || q.method == "HEAD";
    try {
      if ((path == "/v1/completions" || path == "/v1/chat/completions") && q.method == "POST") {
        generate(ex, path == "/v1/chat/completions");
      } else if (path == "/v1/models" && get) {
        send_json(*ex, 200, {{"object", "list"}, {"data", json::array({model_json()})}});
      } else if (path.rfind("/v1/models/", 0) == 0 && get) {
        const std::string id = http::percent_decode(path.substr(11));
        if (id != o.model_name)
          throw ApiError(404, fmt::format("The model '{}' does not exist; this server serves '{}'.", id, o.model_name),
                         "model", "model_not_found");
        send_json(*ex, 200, model_json());
      } else if (path == "/health" && get) {
        if (stopping) {
          send_json(*ex, 503, {{"status", "shutting_down"}});
        } else if (!healthy) {
          std::lock_guard<std::mutex> g(error_mu);
          send_json(*ex, 503, {{"status", "error"}, {"message", last_error}});
        } else {
          send_json(*ex, 200, {{"status", "ok"}});
        }
      } else if (path == "/metrics" && get) {
        ex->respond(200, "text/plain; version=0.0.4; charset=utf-8", metrics.render(state()));
      } else if (const char* allow = allowed_methods(path); *allow) {
        send_error(*ex,
                   ApiError(405, fmt::format("Method {} is not allowed on {} (allowed: {}).", q.method, path, allow), "",
                            "method_not_allowed"),
                   {{"Allow", allow}});
      } else {
        throw ApiError(404, fmt::format("Invalid URL ({} {}).", q.method, path), "", "not_found");
      }
    } catch (const ApiError& e) {
      send_error(*ex, e);
    } catch (const Error& e) {
      send_error(*ex, ApiError(400, e.what()));
    } catch (const std::exception& e) {
      send_error(*ex, ApiError(500, fmt::format("Internal error: {}", e.what()), "", "internal_error"));
    }
  }

  void log(const http::Exchange& ex, int status, double secs) {
    try {
      const http::Request& q = ex.request();
      const std::string ep = endpoint_label(q.path);
      metrics.request(ep, status, secs, ep == "/v1/completions" || ep == "/v1/chat/completions");
      if (!o.log_requests) return;
      // The target is outside input: escaped, so it cannot forge log lines.
      const std::string line =
          fmt::format("{} {} {} prompt_tokens={} completion_tokens={} {:.3f}s\n", http::log_safe(q.method),
                      http::log_safe(q.target), status, ex.prompt_tokens.load(), ex.completion_tokens.load(), secs);
      if (o.log_line)
        o.log_line(line);
      else
        fmt::print(stderr, "{}", line);
    } catch (...) {
      // Logging must never take a request (or the front) down.
    }
  }

  // ---- lifecycle --------------------------------------------------------------------------------

  int bind() {
    if (port >= 0) return port;
    http::FrontOptions fo;
    fo.host = o.host;
    fo.port = o.port;
    fo.limits.max_body_bytes = o.max_body_bytes;
    fo.max_connections = o.max_connections;
    fo.read_timeout_s = o.read_timeout_s;
    fo.tick = [this] { check_deadlines(); };
    fo.error_body = [](int status, const std::string& msg, const char* code) {
      return dump_json(error_body(ApiError(status, msg, "", code)));
    };
    front = std::make_unique<http::Front>(
        std::move(fo), [this](std::shared_ptr<http::Exchange> ex) { handle(ex); },
        [this](const http::Exchange& ex, int status, double secs) { log(ex, status, secs); });
    port = front->bind();
    engine_thread = std::thread([this] { engine_loop(); });
    return port;
  }

  void run() {
    bind();
    front->run();
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
      }
      answer(*j);
    }
    {
      std::unique_lock<std::mutex> lk(jobs_mu);
      jobs_cv.wait_for(lk, std::chrono::seconds(2), [&] { return jobs.empty(); });
    }
    // The front gives those last answers up to 2 s to reach their clients, then closes.
    if (front) front->stop(2.0);
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
