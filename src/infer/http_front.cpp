#include "infer/http_front.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <thread>

#include "core/error.h"

namespace sky::http {

// ---- parsing ---------------------------------------------------------------------------------------

namespace {

char lower(char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; }

std::string lowered(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = lower(c);
  return r;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// RFC 9110 token characters (method and header names).
bool is_tchar(unsigned char c) {
  if (c >= '0' && c <= '9') return true;
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != 0;
}

ParseResult error(int status, std::string msg) {
  ParseResult r;
  r.status = ParseResult::kError;
  r.error_status = status;
  r.error = std::move(msg);
  return r;
}

// Comma-separated tokens of a header value, lower-cased.
std::vector<std::string> tokens(std::string_view v) {
  std::vector<std::string> out;
  while (!v.empty()) {
    const size_t c = v.find(',');
    std::string_view t = trim(v.substr(0, c));
    if (!t.empty()) out.push_back(lowered(t));
    if (c == std::string_view::npos) break;
    v.remove_prefix(c + 1);
  }
  return out;
}

enum class Chunked { kIncomplete, kDone, kError, kTooLarge };

// Decodes a chunked body from the start of `in` into `out`; `used` = bytes of `in` it took.
Chunked decode_chunked(std::string_view in, size_t max_body, size_t max_trailer, std::string& out, size_t& used,
                       std::string& why) {
  size_t p = 0;
  out.clear();
  for (;;) {
    const size_t eol = in.find("\r\n", p);
    if (eol == std::string_view::npos) {
      if (in.size() - p > 1024) return why = "chunk size line too long", Chunked::kError;
      return Chunked::kIncomplete;
    }
    std::string_view line = in.substr(p, eol - p);
    if (line.size() > 1024) return why = "chunk size line too long", Chunked::kError;
    const size_t semi = line.find(';');
    std::string_view hex = trim(line.substr(0, semi));
    if (hex.empty() || hex.size() > 15) return why = "invalid chunk size", Chunked::kError;
    uint64_t n = 0;
    for (char c : hex) {
      const int d = c >= '0' && c <= '9' ? c - '0' : (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (c | 0x20) - 'a' + 10 : -1;
      if (d < 0) return why = "invalid chunk size", Chunked::kError;
      n = n * 16 + uint64_t(d);
    }
    p = eol + 2;
    if (n == 0) {
      // Trailer fields, then an empty line.
      for (;;) {
        const size_t e = in.find("\r\n", p);
        if (e == std::string_view::npos) {
          if (in.size() - p > max_trailer) return why = "trailer too long", Chunked::kError;
          return Chunked::kIncomplete;
        }
        if (e == p) {
          used = e + 2;
          return Chunked::kDone;
        }
        if (e - p > max_trailer) return why = "trailer too long", Chunked::kError;
        p = e + 2;
      }
    }
    if (n > max_body || out.size() + n > max_body) return Chunked::kTooLarge;
    if (in.size() - p < n + 2) return Chunked::kIncomplete;
    if (in.substr(p + n, 2) != "\r\n") return why = "chunk data not followed by CRLF", Chunked::kError;
    out.append(in.substr(p, n));
    p += n + 2;
  }
}

}  // namespace

const std::string* Request::header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (k == name) return &v;
  return nullptr;
}

ParseResult parse_request(std::string_view buf, const ParseLimits& lim) {
  // Empty lines before a request are allowed (RFC 9112 §2.2), a few of them.
  size_t start = 0;
  while (start < 8 && buf.substr(start, 2) == "\r\n") start += 2;
  const size_t end = buf.find("\r\n\r\n", start);
  if (end == std::string_view::npos) {
    if (buf.size() - start > lim.max_head_bytes) return error(431, "request header too large");
    // A request line that cannot become valid is refused now, not after the header limit.
    std::string_view first = buf.substr(start, std::min<size_t>(buf.size() - start, 64));
    for (char c : first.substr(0, first.find(' ')))
      if (!is_tchar((unsigned char)c)) return error(400, "malformed request line");
    return {};
  }
  if (end - start > lim.max_head_bytes) return error(431, "request header too large");
  std::string_view head = buf.substr(start, end - start);
  ParseResult r;
  Request& q = r.req;

  // Request line: method SP target SP HTTP/1.x
  size_t eol = head.find("\r\n");
  std::string_view line = head.substr(0, eol);
  const size_t s1 = line.find(' ');
  const size_t s2 = s1 == std::string_view::npos ? s1 : line.find(' ', s1 + 1);
  if (s2 == std::string_view::npos || line.find(' ', s2 + 1) != std::string_view::npos)
    return error(400, "malformed request line");
  std::string_view method = line.substr(0, s1), target = line.substr(s1 + 1, s2 - s1 - 1), ver = line.substr(s2 + 1);
  if (method.empty() || method.size() > 32) return error(400, "malformed request method");
  for (char c : method)
    if (!is_tchar((unsigned char)c)) return error(400, "malformed request method");
  if (target.empty() || target[0] != '/') return error(400, "the request target must be an absolute path");
  for (unsigned char c : target)
    if (c <= 0x20 || c >= 0x7f) return error(400, "invalid character in the request target");
  if (ver.size() != 8 || ver.substr(0, 5) != "HTTP/" || ver[6] != '.' || ver[5] < '0' || ver[5] > '9' || ver[7] < '0' ||
      ver[7] > '9')
    return error(400, "malformed HTTP version");
  if (ver[5] != '1') return error(505, "only HTTP/1.0 and HTTP/1.1 are supported");
  q.method = std::string(method);
  q.target = std::string(target);
  q.path = q.target.substr(0, q.target.find('?'));
  q.minor_version = ver[7] - '0';
  q.keep_alive = q.minor_version >= 1;

  // Header fields.
  int64_t content_length = -1;
  bool chunked = false;
  std::string_view rest = eol == std::string_view::npos ? std::string_view() : head.substr(eol + 2);
  while (!rest.empty()) {
    eol = rest.find("\r\n");
    line = rest.substr(0, eol);
    rest = eol == std::string_view::npos ? std::string_view() : rest.substr(eol + 2);
    if (line.empty() || line[0] == ' ' || line[0] == '\t') return error(400, "malformed header field (folded or empty)");
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) return error(400, "malformed header field");
    for (char c : line.substr(0, colon))
      if (!is_tchar((unsigned char)c)) return error(400, "malformed header field name");
    std::string_view value = trim(line.substr(colon + 1));
    for (unsigned char c : value)
      if ((c < 0x20 && c != '\t') || c == 0x7f) return error(400, "control character in a header field");
    if (q.headers.size() >= 100) return error(431, "too many header fields");
    q.headers.emplace_back(lowered(line.substr(0, colon)), std::string(value));
    const std::string& name = q.headers.back().first;
    if (name == "content-length") {
      if (value.empty() || value.size() > 18) return error(400, "invalid Content-Length");
      int64_t n = 0;
      for (char c : value) {
        if (c < '0' || c > '9') return error(400, "invalid Content-Length");
        n = n * 10 + (c - '0');
      }
      // Two different lengths: which one a proxy in front believed is unknowable (smuggling).
      if (content_length >= 0 && content_length != n) return error(400, "conflicting Content-Length headers");
      content_length = n;
    } else if (name == "transfer-encoding") {
      const auto t = tokens(value);
      if (t.size() != 1 || t[0] != "chunked" || chunked) return error(501, "only Transfer-Encoding: chunked is supported");
      chunked = true;
    } else if (name == "connection") {
      for (const auto& t : tokens(value)) {
        if (t == "close") q.keep_alive = false;
        if (t == "keep-alive" && q.minor_version == 0) q.keep_alive = true;
      }
    } else if (name == "expect") {
      if (!iequals(value, "100-continue")) return error(417, "only Expect: 100-continue is supported");
      r.expect_continue = q.minor_version >= 1;
    }
  }
  if (chunked && content_length >= 0) return error(400, "both Content-Length and Transfer-Encoding");
  if (chunked && q.minor_version == 0) return error(400, "Transfer-Encoding in an HTTP/1.0 request");
  if (content_length > int64_t(lim.max_body_bytes)) return error(413, "request body too large");

  r.head_done = true;
  const size_t body_at = end + 4;
  std::string_view body = buf.substr(body_at);
  if (chunked) {
    size_t used = 0;
    std::string why;
    switch (decode_chunked(body, lim.max_body_bytes, lim.max_head_bytes, q.body, used, why)) {
      case Chunked::kIncomplete:
        q.body.clear();
        return r;
      case Chunked::kTooLarge:
        return error(413, "request body too large");
      case Chunked::kError:
        return error(400, "malformed chunked body: " + why);
      case Chunked::kDone:
        r.consumed = body_at + used;
        break;
    }
  } else {
    const size_t n = content_length < 0 ? 0 : size_t(content_length);
    if (body.size() < n) return r;
    q.body = std::string(body.substr(0, n));
    r.consumed = body_at + n;
  }
  r.status = ParseResult::kDone;
  r.expect_continue = false;
  return r;
}

std::string percent_decode(std::string_view s) {
  auto hex = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (c | 0x20) - 'a' + 10 : -1;
  };
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      out.push_back(char(hex(s[i + 1]) * 16 + hex(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::string log_safe(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c >= 0x7f || c == '\\')
      out += fmt::format("\\x{:02x}", c);
    else
      out.push_back(char(c));
  }
  return out;
}

// ---- exchange ----------------------------------------------------------------------------------------

struct FrontShared {
  int event_fd = -1;
  std::mutex mu;
  std::vector<std::shared_ptr<Exchange>> dirty;  // exchanges with output or an end to move
  bool closed = false;
  // Handler work.
  std::condition_variable cv;
  std::deque<std::shared_ptr<Exchange>> work;
  bool stop_workers = false;

  ~FrontShared() {
    if (event_fd >= 0) ::close(event_fd);  // here, not in ~Front: exchanges may outlive the front
  }
  void notify() const {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(event_fd, &one, sizeof one);
  }
};

namespace {

const char* reason_phrase(int s) {
  switch (s) {
    case 100: return "Continue";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 417: return "Expectation Failed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return s < 300 ? "OK" : s < 500 ? "Client Error" : "Server Error";
  }
}

std::string head_bytes(int status, std::string_view ctype, const Headers& extra, bool close, int minor) {
  std::string h = fmt::format("HTTP/1.1 {} {}\r\nContent-Type: {}\r\n", status, reason_phrase(status), ctype);
  for (const auto& [k, v] : extra) h += k + ": " + v + "\r\n";
  if (close)
    h += "Connection: close\r\n";
  else if (minor == 0)
    h += "Connection: keep-alive\r\n";
  return h;
}

}  // namespace

Exchange::Exchange(std::shared_ptr<FrontShared> f, int fd, uint64_t conn, Request req, Clock::time_point start)
    : front_(std::move(f)), fd_(fd), conn_(conn), req_(std::move(req)), start_(start), close_after_(!req_.keep_alive) {}

void Exchange::respond(int status, std::string_view content_type, std::string body, const Headers& extra) {
  std::string bytes;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (started_) return;
    started_ = true;
    status_ = status;
    bytes = head_bytes(status, content_type, extra, close_after_, req_.minor_version);
    bytes += fmt::format("Content-Length: {}\r\n\r\n", body.size());
  }
  if (req_.method != "HEAD") bytes += body;  // HEAD: the length of the body GET would send, no body
  queue(std::move(bytes), true);
}

void Exchange::begin_stream(std::string_view content_type, const Headers& extra) {
  std::string bytes;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (started_) return;
    started_ = true;
    status_ = 200;
    // HTTP/1.0 has no chunked coding: the stream ends when the connection does.
    chunked_ = req_.minor_version >= 1;
    if (!chunked_) close_after_ = true;
    bytes = head_bytes(200, content_type, extra, close_after_, req_.minor_version);
    if (chunked_) bytes += "Transfer-Encoding: chunked\r\n";
    bytes += "\r\n";
  }
  queue(std::move(bytes), false);
}

bool Exchange::send(std::string_view data) {
  if (gone_) return false;
  if (data.empty()) return true;  // an empty chunk would end the stream
  queue(chunked_ ? fmt::format("{:x}\r\n{}\r\n", data.size(), data) : std::string(data), false);
  return !gone_;
}

void Exchange::end_stream() { queue(chunked_ ? "0\r\n\r\n" : "", true); }

void Exchange::queue(std::string bytes, bool end) {
  bool notify = false;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (gone_ || ended_) return;
    pending_ += bytes;
    if (end) ended_ = true;
    if (!dirty_) dirty_ = notify = true;
  }
  if (!notify) return;
  {
    std::lock_guard<std::mutex> g(front_->mu);
    if (front_->closed) return;
    front_->dirty.push_back(shared_from_this());
  }
  front_->notify();
}

void Exchange::on_gone(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (!gone_) {
      gone_fns_.push_back(std::move(fn));
      return;
    }
  }
  fn();
}

void Exchange::mark_gone() {
  std::vector<std::function<void()>> fns;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (gone_ || ended_) return;
    gone_ = true;
    fns.swap(gone_fns_);
  }
  for (auto& f : fns) {
    try {
      f();
    } catch (...) {
      // A callback's failure must not take the front down.
    }
  }
}

// ---- connections -----------------------------------------------------------------------------------

struct Front::Conn {
  int fd = -1;
  uint64_t id = 0;
  // kLinger: an error answer is out and our side is shut; the client's unread request bytes are
  // drained for a moment, so closing does not reset the connection before it reads the answer.
  enum State { kHead, kBusy, kClosing, kLinger } state = kHead;
  bool linger = false;
  Clock::time_point linger_until{};
  std::string in, out;
  size_t out_off = 0;
  bool peer_closed = false, sent_continue = false;
  Clock::time_point request_start{};  // first byte of the request being read (kHead, in non-empty)
  Clock::time_point last_active{};    // idle keep-alive deadline base
  Clock::time_point write_stall{};    // since when output has waited without progress
  std::shared_ptr<Exchange> ex;       // kBusy
  uint32_t events = 0;
  size_t pending() const { return out.size() - out_off; }
};

namespace {

double secs(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

Front::Front(FrontOptions o, Handler h, Logger log)
    : o_(std::move(o)), handler_(std::move(h)), log_(std::move(log)), shared_(std::make_shared<FrontShared>()) {
  SKY_CHECK(o_.handler_threads >= 1, "the HTTP front needs at least one handler thread");
  shared_->event_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  SKY_CHECK(shared_->event_fd >= 0, "eventfd: {}", std::strerror(errno));
}

Front::~Front() {
  stop(0);
  {
    std::lock_guard<std::mutex> g(shared_->mu);
    shared_->stop_workers = true;
    shared_->closed = true;
  }
  shared_->cv.notify_all();
  for (auto& t : workers_) t.join();
  for (auto& c : conns_)
    if (c) ::close(c->fd);
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
}

int Front::bind() {
  if (port_ >= 0) return port_;
  // Every connection is a descriptor: use what the hard limit allows, and cap below it.
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    const rlim_t want = std::min<rlim_t>(rl.rlim_max, 65536);
    if (rl.rlim_cur < want) {
      rl.rlim_cur = want;
      ::setrlimit(RLIMIT_NOFILE, &rl);
      ::getrlimit(RLIMIT_NOFILE, &rl);
    }
    max_conns_ = int(std::max<int64_t>(16, std::min<int64_t>(o_.max_connections, int64_t(rl.rlim_cur) - 128)));
  } else {
    max_conns_ = std::min(o_.max_connections, 512);
  }

  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  const std::string port = std::to_string(o_.port);
  const int rc = ::getaddrinfo(o_.host.c_str(), port.c_str(), &hints, &res);
  SKY_CHECK(rc == 0, "cannot listen on {}:{}: {}", o_.host, o_.port, ::gai_strerror(rc));
  std::string last = "no address";
  for (addrinfo* a = res; a && listen_fd_ < 0; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 1024) == 0) {
      listen_fd_ = fd;
    } else {
      last = std::strerror(errno);
      ::close(fd);
    }
  }
  ::freeaddrinfo(res);
  SKY_CHECK(listen_fd_ >= 0, "cannot listen on {}:{} ({}: port in use, or not a local address?)", o_.host, o_.port,
            last);
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len);
  port_ = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                         : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);

  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  SKY_CHECK(epoll_fd_ >= 0, "epoll_create1: {}", std::strerror(errno));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = listen_fd_;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev);
  ev.data.fd = shared_->event_fd;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, shared_->event_fd, &ev);

  for (int i = 0; i < o_.handler_threads; i++)
    workers_.emplace_back([this] {
      for (;;) {
        std::shared_ptr<Exchange> ex;
        {
          std::unique_lock<std::mutex> lk(shared_->mu);
          shared_->cv.wait(lk, [&] { return shared_->stop_workers || !shared_->work.empty(); });
          if (shared_->work.empty()) return;
          ex = std::move(shared_->work.front());
          shared_->work.pop_front();
        }
        try {
          handler_(ex);
        } catch (const std::exception& e) {
          ex->respond(500, "application/json",
                      o_.error_body ? o_.error_body(500, fmt::format("Internal error: {}", e.what()), "internal_error")
                                    : "{}");
        } catch (...) {
          ex->respond(500, "application/json", o_.error_body ? o_.error_body(500, "Internal error.", "internal_error") : "{}");
        }
      }
    });
  return port_;
}

void Front::stop(double drain_s) {
  std::lock_guard<std::mutex> g(stop_mu_);
  if (stop_at_ == Clock::time_point::max())
    stop_at_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(drain_s));
  stop_requested_ = true;
  shared_->notify();
}

void Front::run() {
  SKY_CHECK(listen_fd_ >= 0, "Front::run before bind");
  bool draining = false;
  for (;;) {
    Clock::time_point drain_until;
    {
      std::lock_guard<std::mutex> g(stop_mu_);
      drain_until = stop_at_;
    }
    if (stop_requested_ && !draining) {
      draining = true;
      ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
      ::close(listen_fd_);
      listen_fd_ = -2;  // closed, but bound once
    }
    if (draining) {
      // Idle connections go now; busy ones get until the drain deadline to finish their output.
      bool left = false;
      for (auto& c : conns_) {
        if (!c) continue;
        if (c->state == Conn::kHead && c->pending() == 0)
          close_conn(*c);
        else
          left = true;
      }
      if (!left || Clock::now() >= drain_until) break;
    }
    loop_once(draining ? 10 : int(o_.tick_interval_s * 1000));
  }
  for (auto& c : conns_)
    if (c) close_conn(*c);
  std::lock_guard<std::mutex> g(shared_->mu);
  shared_->closed = true;
  shared_->dirty.clear();
}

void Front::loop_once(int timeout_ms) {
  epoll_event evs[256];
  const int n = ::epoll_wait(epoll_fd_, evs, 256, std::max(1, timeout_ms));
  for (int i = 0; i < n; i++) {
    const int fd = evs[i].data.fd;
    if (fd == listen_fd_) {
      accept_all();
      continue;
    }
    if (fd == shared_->event_fd) {
      uint64_t v;
      while (::read(fd, &v, sizeof v) > 0) {
      }
      continue;
    }
    if (fd < 0 || size_t(fd) >= conns_.size() || !conns_[size_t(fd)]) continue;
    Conn& c = *conns_[size_t(fd)];
    const uint32_t e = evs[i].events;
    if (e & EPOLLERR) {
      close_conn(c);
      continue;
    }
    if (e & EPOLLOUT) {
      flush(c);
      if (!conns_[size_t(fd)]) continue;
    }
    if (c.state == Conn::kLinger) {
      char sink[16 << 10];
      ssize_t n;
      while ((n = ::recv(c.fd, sink, sizeof sink, 0)) > 0) {
      }
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) || (e & (EPOLLHUP | EPOLLRDHUP))) close_conn(c);
    } else if (c.state == Conn::kHead && (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))) {
      on_readable(c);
    } else if (e & (EPOLLRDHUP | EPOLLHUP)) {
      // Busy or closing: the client shut its side (half-close counts) or hung up: it is gone.
      close_conn(c);
    }
  }
  move_output();
  const auto now = Clock::now();
  if (now - last_tick_ >= std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o_.tick_interval_s))) {
    last_tick_ = now;
    check_deadlines();
    if (o_.tick) {
      try {
        o_.tick();
      } catch (...) {
      }
    }
  }
}

void Front::accept_all() {
  for (;;) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE) evict_one();  // make room for the next try
      return;
    }
    if (n_conns_ >= size_t(max_conns_)) evict_one();
    if (n_conns_ >= size_t(max_conns_)) {
      // Every slot is busy generating: this one gets a 503, best effort, and goes.
      const std::string body = o_.error_body ? o_.error_body(503, "Too many connections.", "overloaded") : "";
      const std::string r = head_bytes(503, "application/json", {{"Retry-After", "1"}}, true, 1) +
                            fmt::format("Content-Length: {}\r\n\r\n", body.size()) + body;
      [[maybe_unused]] ssize_t w = ::send(fd, r.data(), r.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      ::close(fd);
      continue;
    }
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // tokens go out as they come
    if (size_t(fd) >= conns_.size()) conns_.resize(size_t(fd) + 1);
    auto c = std::make_unique<Conn>();
    c->fd = fd;
    c->id = next_id_++;
    c->last_active = Clock::now();
    conns_[size_t(fd)] = std::move(c);
    n_conns_++;
    update_events(*conns_[size_t(fd)]);
  }
}

void Front::evict_one() {
  // The connection that has waited longest without a complete request (or idled longest between
  // requests) is the one a slow-client flood is made of.
  Conn* victim = nullptr;
  Clock::time_point oldest = Clock::time_point::max();
  for (auto& c : conns_) {
    if (!c || c->state != Conn::kHead) continue;
    const auto t = c->in.empty() ? c->last_active : c->request_start;
    if (t < oldest) oldest = t, victim = c.get();
  }
  if (!victim) return;
  const int fd = victim->fd;
  const uint64_t id = victim->id;
  if (!victim->in.empty())
    fail(*victim, 408, "The connection was closed to make room: the request took too long to arrive.", "request_timeout");
  if (auto& s = conns_[size_t(fd)]; s && s->id == id) close_conn(*s);  // even if its answer is not all out
}

void Front::update_events(Conn& c) {
  uint32_t want = EPOLLRDHUP;
  if (c.state == Conn::kHead || c.state == Conn::kLinger) want |= EPOLLIN;
  if (c.pending() > 0) want |= EPOLLOUT;
  if (want == c.events) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.fd = c.fd;
  ::epoll_ctl(epoll_fd_, c.events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c.fd, &ev);
  c.events = want;
}

void Front::on_readable(Conn& c) {
  char buf[64 << 10];
  const size_t cap = o_.limits.max_head_bytes + o_.limits.max_body_bytes + (64 << 10);
  for (;;) {
    const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
    if (n > 0) {
      if (c.in.empty()) c.request_start = Clock::now();
      c.in.append(buf, size_t(n));
      if (c.in.size() > cap) break;  // the parser refuses it below
      continue;
    }
    if (n == 0) c.peer_closed = true;
    else if (errno == EINTR) continue;
    else if (errno != EAGAIN && errno != EWOULDBLOCK) c.peer_closed = true;
    break;
  }
  if (c.peer_closed) {
    // A client that shut its sending side is treated as gone, even with a whole request read:
    // nobody may be left to read the answer, and generation is the expensive part.
    close_conn(c);
    return;
  }
  try_parse(c);
}

void Front::try_parse(Conn& c) {
  while (c.state == Conn::kHead && !c.in.empty()) {
    ParseResult r = parse_request(c.in, o_.limits);
    if (r.status == ParseResult::kError) {
      const char* code = r.error_status == 413 ? "request_too_large" : r.error_status == 431 ? "header_too_large" : "bad_request";
      std::string msg = r.error_status == 413
                            ? fmt::format("The request body exceeds the server's limit of {} bytes.", o_.limits.max_body_bytes)
                            : "Malformed HTTP request: " + r.error + ".";
      fail(c, r.error_status, msg, code);
      return;
    }
    if (r.status == ParseResult::kIncomplete) {
      if (r.expect_continue && !c.sent_continue) {
        c.sent_continue = true;
        c.out += "HTTP/1.1 100 Continue\r\n\r\n";
        flush(c);
      }
      return;
    }
    c.in.erase(0, r.consumed);
    c.sent_continue = false;
    if (!c.in.empty()) c.request_start = Clock::now();  // a pipelined request has started
    dispatch(c, std::move(r.req));
  }
  if (conns_[size_t(c.fd)].get() == &c) update_events(c);
}

void Front::dispatch(Conn& c, Request req) {
  c.state = Conn::kBusy;
  c.ex = std::make_shared<Exchange>(shared_, c.fd, c.id, std::move(req), Clock::now());
  update_events(c);
  {
    std::lock_guard<std::mutex> g(shared_->mu);
    shared_->work.push_back(c.ex);
  }
  shared_->cv.notify_one();
}

void Front::fail(Conn& c, int status, const std::string& msg, const char* code) {
  // Answered by the front itself: logged like any other request, then the connection closes
  // (after a malformed request, where the next one starts is unknowable).
  Request q;
  if (auto r = parse_request(c.in.substr(0, c.in.find("\r\n")) + "\r\n\r\n", o_.limits); r.head_done) q = r.req;
  if (q.method.empty()) q.method = "-", q.target = q.path = "-";
  q.keep_alive = false;
  auto ex = std::make_shared<Exchange>(shared_, c.fd, c.id, std::move(q), c.request_start);
  const std::string body = o_.error_body ? o_.error_body(status, msg, code) : msg;
  c.out += head_bytes(status, "application/json", {}, true, 1) + fmt::format("Content-Length: {}\r\n\r\n", body.size()) + body;
  ex->status_ = status;
  if (log_) log_(*ex, status, secs(Clock::now() - c.request_start));
  c.in.clear();
  c.state = Conn::kClosing;
  c.linger = true;
  flush(c);  // may close c
}

void Front::flush(Conn& c) {
  while (c.pending() > 0) {
    const ssize_t n = ::send(c.fd, c.out.data() + c.out_off, c.pending(), MSG_NOSIGNAL);
    if (n > 0) {
      c.out_off += size_t(n);
      c.write_stall = Clock::now();
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    close_conn(c);  // the peer reset the connection
    return;
  }
  if (c.pending() == 0) {
    c.out.clear();
    c.out_off = 0;
    if (c.state == Conn::kClosing && c.linger) {
      ::shutdown(c.fd, SHUT_WR);
      c.state = Conn::kLinger;
      c.linger_until = Clock::now() + std::chrono::seconds(2);
    } else if (c.state == Conn::kClosing) {
      close_conn(c);
      return;
    }
  } else if (c.out_off > (1 << 20)) {
    c.out.erase(0, c.out_off);
    c.out_off = 0;
  }
  update_events(c);
}

void Front::move_output() {
  std::vector<std::shared_ptr<Exchange>> dirty;
  {
    std::lock_guard<std::mutex> g(shared_->mu);
    dirty.swap(shared_->dirty);
  }
  for (auto& ex : dirty) {
    std::string bytes;
    bool ended;
    {
      std::lock_guard<std::mutex> g(ex->mu_);
      bytes.swap(ex->pending_);
      ended = ex->ended_;
      ex->dirty_ = false;
    }
    if (ex->fd_ < 0 || size_t(ex->fd_) >= conns_.size()) continue;
    auto& slot = conns_[size_t(ex->fd_)];
    if (!slot || slot->id != ex->conn_ || slot->ex != ex) continue;  // its client is gone
    Conn& c = *slot;
    if (c.pending() == 0) c.write_stall = Clock::now();
    c.out += bytes;
    if (c.pending() > o_.max_pending_output) {
      close_conn(c);  // a client that does not read: gone
      continue;
    }
    if (ended) {
      if (log_) log_(*ex, ex->status(), secs(Clock::now() - ex->start()));
      c.ex.reset();
      c.state = ex->close_after_ ? Conn::kClosing : Conn::kHead;
      c.last_active = Clock::now();
    }
    flush(c);
    if (slot && slot->id == ex->conn_ && c.state == Conn::kHead) try_parse(c);  // pipelined requests
  }
}

void Front::close_conn(Conn& c) {
  if (c.ex) {
    auto ex = std::move(c.ex);
    ex->mark_gone();
    if (log_) log_(*ex, ex->status() ? ex->status() : 499, secs(Clock::now() - ex->start()));
  }
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c.fd, nullptr);
  ::close(c.fd);
  n_conns_--;
  conns_[size_t(c.fd)].reset();  // destroys c
}

void Front::check_deadlines() {
  const auto now = Clock::now();
  const auto dur = [](double s) { return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s)); };
  for (auto& slot : conns_) {
    if (!slot) continue;
    Conn& c = *slot;
    if ((c.pending() > 0 && now - c.write_stall > dur(o_.write_timeout_s)) ||
        (c.state == Conn::kLinger && now >= c.linger_until)) {
      close_conn(c);
      continue;
    }
    if (c.state != Conn::kHead) continue;
    if (c.in.empty()) {
      if (c.pending() == 0 && now - c.last_active > dur(o_.idle_timeout_s)) close_conn(c);
    } else if (now - c.request_start > dur(o_.read_timeout_s)) {
      fail(c, 408, fmt::format("The request did not arrive within {} s.", o_.read_timeout_s), "request_timeout");
    }
  }
}

}  // namespace sky::http
