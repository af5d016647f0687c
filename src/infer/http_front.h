#pragma once
// An event-driven HTTP/1.1 front for `skymoe serve`.
//
// Why our own: cpp-httplib gives every connection a worker thread for its whole life, and its read
// timeout is per read, so clients that drip a byte every few seconds held every worker and stalled
// the server, /health included. Here one thread multiplexes all sockets with epoll and a request
// costs a thread only while its complete request is being handled (parse, tokenize, submit: short),
// never while it is read, waits for tokens or is written. Slow clients therefore cost a socket and
// a buffer each, and two bounds keep even those finite:
//  - total deadlines: a request's head and body must arrive within `read_timeout_s` of its first
//    byte, an idle keep-alive connection closes after `idle_timeout_s`, and output that makes no
//    progress for `write_timeout_s` ends the connection;
//  - a connection cap: when the table is full, the connection that has waited longest for its
//    request to arrive is closed (408) to make room, so a flood of slow clients cannot lock out
//    fast ones.
// Parsing is strict where lenience was a defect: conflicting Content-Length headers, Content-Length
// with Transfer-Encoding, and control characters in the request line are 400s. Pipelined requests
// are answered in order; a client that half-closes or resets its connection is gone, and the
// handler learns it through Exchange::on_gone (the server cancels its generation).
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace sky::http {

using Clock = std::chrono::steady_clock;
using Headers = std::vector<std::pair<std::string, std::string>>;

struct Request {
  std::string method, target, path;  // path: the target up to '?', not percent-decoded
  int minor_version = 1;             // HTTP/1.<minor>
  Headers headers;                   // names lower-cased, in arrival order
  std::string body;                  // de-chunked
  bool keep_alive = true;
  const std::string* header(std::string_view lower_name) const;
};

// ---- parsing (pure; fuzzed) -----------------------------------------------------------------------

struct ParseLimits {
  size_t max_head_bytes = 16 << 10;
  size_t max_body_bytes = 1 << 20;
};

struct ParseResult {
  enum Status { kIncomplete, kDone, kError } status = kIncomplete;
  int error_status = 0;  // kError: 400, 413, 431, 501, 505, 417
  std::string error;     // kError: what was wrong, for the client
  size_t consumed = 0;   // kDone: bytes of the buffer this request used (the rest is pipelined)
  bool head_done = false, expect_continue = false;  // kIncomplete: the head has arrived (for 100-continue)
  Request req;           // kDone: the request; head_done: its head
};

// Parses one request from the start of `buf`. Never throws; kIncomplete means "read more".
ParseResult parse_request(std::string_view buf, const ParseLimits& lim);

// Percent-decodes a path segment ("%2F" -> "/"); invalid escapes stay as they are.
std::string percent_decode(std::string_view s);
// A printable, single-line rendering of outside bytes for logs (control and non-ASCII bytes as \xNN).
std::string log_safe(std::string_view s);

// ---- one request and its response ----------------------------------------------------------------

class Front;
struct FrontShared;

// Thread-safe: the handler, the engine thread and the front all use it. Exactly one of respond()
// or begin_stream() ... end_stream() should be called; calls after the client is gone are no-ops.
class Exchange : public std::enable_shared_from_this<Exchange> {
 public:
  Exchange(std::shared_ptr<FrontShared> f, int fd, uint64_t conn, Request req, Clock::time_point start);
  const Request& request() const { return req_; }
  Clock::time_point start() const { return start_; }

  void respond(int status, std::string_view content_type, std::string body, const Headers& extra = {});
  void begin_stream(std::string_view content_type, const Headers& extra = {});  // 200, chunked
  bool send(std::string_view data);  // one chunk of the stream; false when the client is gone
  void end_stream();

  bool gone() const { return gone_; }
  // `fn` runs once, on the front's thread, if the client goes away before the response has ended
  // (now, if it already has). Keep it short and non-blocking.
  void on_gone(std::function<void()> fn);
  int status() const { return status_; }

  // For the request log: what the handler reports about the request's work.
  std::atomic<int> prompt_tokens{0}, completion_tokens{0};

 private:
  friend class Front;
  void queue(std::string bytes, bool end);  // hands bytes to the front's thread
  void mark_gone();                          // front thread

  std::shared_ptr<FrontShared> front_;
  const int fd_;
  const uint64_t conn_;
  const Request req_;
  const Clock::time_point start_;
  std::mutex mu_;
  std::string pending_;  // produced, not yet moved to the connection
  bool started_ = false, ended_ = false, chunked_ = false, dirty_ = false;
  bool close_after_ = false;  // the connection closes once this response is out
  std::atomic<bool> gone_{false};
  std::atomic<int> status_{0};
  std::vector<std::function<void()>> gone_fns_;
};

// ---- the server ------------------------------------------------------------------------------------

struct FrontOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port
  ParseLimits limits;
  int max_connections = 4096;  // lowered to what the file-descriptor limit allows
  double read_timeout_s = 30;  // a request's head and body, from its first byte (408 after)
  double idle_timeout_s = 60;  // a keep-alive connection with no request
  double write_timeout_s = 30;  // pending output without progress: the client is gone
  size_t max_pending_output = 16 << 20;  // unread output beyond this: the client is gone
  int handler_threads = 4;
  double tick_interval_s = 0.05;
  std::function<void()> tick;  // runs on the front's thread every tick_interval_s (e.g. deadlines)
  // The body of errors the front answers itself (status, message, code) -> JSON.
  std::function<std::string(int, const std::string&, const char*)> error_body;
};

using Handler = std::function<void(std::shared_ptr<Exchange>)>;
// Called once per exchange, when its response has ended or its client has gone (status 499 then,
// if no response had started). Runs on the front's thread; must not throw or block.
using Logger = std::function<void(const Exchange&, int status, double seconds)>;

class Front {
 public:
  Front(FrontOptions o, Handler h, Logger log);
  ~Front();  // stop(), then joins the handler threads
  Front(const Front&) = delete;
  Front& operator=(const Front&) = delete;

  int bind();  // listens; returns the port. Throws sky::Error.
  void run();  // serves until stop()
  // Thread-safe, idempotent: stops accepting, gives queued output up to `drain_s` to reach its
  // clients, closes everything; run() then returns.
  void stop(double drain_s = 2.0);
  size_t connections() const { return n_conns_; }
  int max_connections() const { return max_conns_; }

  struct Conn;

 private:
  void loop_once(int timeout_ms);
  void accept_all();
  void on_readable(Conn& c);
  void try_parse(Conn& c);
  void dispatch(Conn& c, Request req);
  void fail(Conn& c, int status, const std::string& msg, const char* code);
  void flush(Conn& c);
  void move_output();
  void close_conn(Conn& c);
  void update_events(Conn& c);
  void check_deadlines();
  void evict_one();

  FrontOptions o_;
  Handler handler_;
  Logger log_;
  std::shared_ptr<FrontShared> shared_;
  int listen_fd_ = -1, epoll_fd_ = -1;
  int port_ = -1;
  int max_conns_ = 0;
  std::atomic<size_t> n_conns_{0};
  uint64_t next_id_ = 1;
  std::vector<std::unique_ptr<Conn>> conns_;  // indexed by fd
  Clock::time_point last_tick_{};
  std::vector<std::thread> workers_;  // run handlers
  std::mutex stop_mu_;
  Clock::time_point stop_at_ = Clock::time_point::max();  // stop(): the drain deadline
  std::atomic<bool> stop_requested_{false};
};

}  // namespace sky::http
