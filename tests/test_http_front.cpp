// The HTTP front of `skymoe serve`: the request parser, and the server's behaviour against slow,
// pipelining, half-closing and malformed clients (the defects of cpp-httplib's threaded server).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "infer/http_front.h"

using namespace sky::http;
using namespace std::chrono_literals;

namespace {

ParseResult parse(const std::string& s, size_t max_body = 1 << 20) {
  ParseLimits lim;
  lim.max_body_bytes = max_body;
  return parse_request(s, lim);
}

TEST(HttpParse, CompleteRequests) {
  auto r = parse("POST /v1/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET");
  ASSERT_EQ(r.status, ParseResult::kDone) << r.error;
  EXPECT_EQ(r.req.method, "POST");
  EXPECT_EQ(r.req.path, "/v1/completions");
  EXPECT_EQ(r.req.target, "/v1/completions?x=1");
  EXPECT_EQ(r.req.body, "hello");
  EXPECT_EQ(r.consumed, r.consumed);
  EXPECT_EQ(std::string("POST /v1/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello").size(), r.consumed);
  EXPECT_TRUE(r.req.keep_alive);
  EXPECT_EQ(*r.req.header("host"), "a");

  auto c = parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n");
  ASSERT_EQ(c.status, ParseResult::kDone) << c.error;
  EXPECT_EQ(c.req.body, "abcde");

  auto h10 = parse("GET /health HTTP/1.0\r\n\r\n");
  ASSERT_EQ(h10.status, ParseResult::kDone);
  EXPECT_FALSE(h10.req.keep_alive);
  EXPECT_TRUE(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").req.keep_alive);
  EXPECT_FALSE(parse("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").req.keep_alive);
  // The same length twice is one length.
  EXPECT_EQ(parse("POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok").status, ParseResult::kDone);
}

TEST(HttpParse, IncompleteUntilEverythingArrived) {
  const std::string full = "POST / HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nbody";
  for (size_t n = 0; n < full.size(); n++) {
    auto r = parse(full.substr(0, n));
    EXPECT_EQ(r.status, ParseResult::kIncomplete) << n;
    EXPECT_EQ(r.expect_continue, n >= full.size() - 4) << n;
  }
  const std::string ch = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n";
  for (size_t n = 0; n < ch.size(); n++) EXPECT_EQ(parse(ch.substr(0, n)).status, ParseResult::kIncomplete) << n;
  EXPECT_EQ(parse(ch).status, ParseResult::kDone);
}

TEST(HttpParse, Errors) {
  struct Case {
    std::string req;
    int status;
  };
  const std::vector<Case> cases = {
      // Two different lengths: request smuggling if a proxy believes the other one.
      {"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", 400},
      {"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 400},
      {"POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", 413},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n", 400},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\n", 413},
      {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
      {"GET / HTTP/2.0\r\n\r\n", 505},
      {"GET / HTTP/1.1 extra\r\n\r\n", 400},
      {"GET /a\x01" "b HTTP/1.1\r\n\r\n", 400},
      {"GET http://x/ HTTP/1.1\r\n\r\n", 400},
      {"G(T / HTTP/1.1\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nA: x\x01y\r\n\r\n", 400},
      {"GET / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", 417},
      {"GET / HTTP/1.1\r\nA: " + std::string(20000, 'a') + "\r\n\r\n", 431},
      {"GET / HTTP/1.1\r\nA: " + std::string(20000, 'a'), 431},  // no end in sight
      {"\x16\x03\x01\x02", 400},  // TLS on the plain port: refused at once
  };
  for (const auto& c : cases) {
    auto r = parse(c.req);
    EXPECT_EQ(r.status, ParseResult::kError) << c.req.substr(0, 60);
    EXPECT_EQ(r.error_status, c.status) << c.req.substr(0, 60) << " -> " << r.error;
    EXPECT_FALSE(r.error.empty());
  }
}

TEST(HttpParse, LogSafeAndPercentDecode) {
  EXPECT_EQ(log_safe("/v1/x\nGET /forged"), "/v1/x\\x0aGET /forged");
  EXPECT_EQ(log_safe("a\\b\x7f\xc3\xa9"), "a\\x5cb\\x7f\\xc3\\xa9");
  EXPECT_EQ(percent_decode("a%2Fb%0a%zz%4"), "a/b\n%zz%4");
}

// ---- the front against real sockets ---------------------------------------------------------------

int connect_to(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

void send_all(int fd, const std::string& s) { ASSERT_EQ(send(fd, s.data(), s.size(), MSG_NOSIGNAL), ssize_t(s.size())); }

// Reads until `n` occurrences of `needle`, EOF or the time limit.
std::string read_for(int fd, const std::string& needle, int n, std::chrono::milliseconds limit) {
  std::string data;
  const auto end = std::chrono::steady_clock::now() + limit;
  auto count = [&] {
    int k = 0;
    for (size_t p = data.find(needle); p != std::string::npos; p = data.find(needle, p + 1)) k++;
    return k;
  };
  while (count() < n) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()).count();
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, int(left)) <= 0) break;
    char buf[4096];
    const ssize_t r = recv(fd, buf, sizeof buf, 0);
    if (r <= 0) break;
    data.append(buf, size_t(r));
  }
  return data;
}

// A front whose handler answers "<method> <path> <body>" at once, or streams slowly on /stream.
struct TestFront {
  std::unique_ptr<Front> f;
  std::thread th;
  int port = 0;
  std::atomic<int> gone{0}, handled{0};
  std::vector<std::string> log;
  std::mutex log_mu;
  explicit TestFront(FrontOptions o = {}) {
    o.host = "127.0.0.1";
    o.port = 0;
    o.error_body = [](int s, const std::string& m, const char*) { return "{\"status\":" + std::to_string(s) + ",\"m\":\"" + m + "\"}"; };
    f = std::make_unique<Front>(
        o,
        [this](std::shared_ptr<Exchange> ex) {
          handled++;
          const Request& q = ex->request();
          if (q.path == "/stream") {
            ex->on_gone([this] { gone++; });
            ex->begin_stream("text/plain");
            std::thread([ex] {
              for (int i = 0; i < 200 && !ex->gone(); i++) {
                ex->send("tick\n");
                std::this_thread::sleep_for(10ms);
              }
              ex->end_stream();
            }).detach();
            return;
          }
          ex->respond(200, "text/plain", q.method + " " + q.path + " " + q.body);
        },
        [this](const Exchange& ex, int status, double) {
          std::lock_guard<std::mutex> g(log_mu);
          log.push_back(ex.request().method + " " + std::to_string(status));
        });
    port = f->bind();
    th = std::thread([this] { f->run(); });
  }
  ~TestFront() {
    f->stop(0.5);
    th.join();
  }
};

TEST(HttpFront, PipelinedRequestsAnsweredInOrder) {
  TestFront t;
  const int fd = connect_to(t.port);
  send_all(fd,
           "GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /c HTTP/1.1\r\nConnection: close\r\n\r\n");
  const std::string got = read_for(fd, "HTTP/1.1 200", 3, 3000ms);
  const size_t a = got.find("GET /a "), b = got.find("POST /b xyz"), c = got.find("GET /c ");
  ASSERT_NE(a, std::string::npos) << got;
  ASSERT_NE(b, std::string::npos) << got;
  ASSERT_NE(c, std::string::npos) << got;
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
  EXPECT_NE(got.find("Connection: close"), std::string::npos);
  close(fd);
}

TEST(HttpFront, ConflictingLengthsAre400AndRangeIsIgnored) {
  TestFront t;
  int fd = connect_to(t.port);
  send_all(fd, "POST /x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 4\r\n\r\nabcd");
  std::string got = read_for(fd, "\r\n\r\n", 1, 2000ms);
  EXPECT_EQ(got.rfind("HTTP/1.1 400", 0), 0u) << got;
  close(fd);
  // A Range header never cuts a response (POST answers are not resources to take parts of).
  fd = connect_to(t.port);
  send_all(fd, "POST /x HTTP/1.1\r\nRange: bytes=0-2\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
  got = read_for(fd, "hello", 1, 2000ms);
  EXPECT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
  EXPECT_NE(got.find("POST /x hello"), std::string::npos) << got;
  close(fd);
}

TEST(HttpFront, ExpectContinueAndChunkedUpload) {
  TestFront t;
  const int fd = connect_to(t.port);
  send_all(fd, "POST /u HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n");
  EXPECT_NE(read_for(fd, "100 Continue", 1, 2000ms).find("HTTP/1.1 100 Continue"), std::string::npos);
  send_all(fd, "5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n");
  EXPECT_NE(read_for(fd, "hello!", 1, 2000ms).find("POST /u hello!"), std::string::npos);
  close(fd);
}

TEST(HttpFront, HalfClosedOrVanishedClientIsGone) {
  TestFront t;
  // Gone in the middle of a stream.
  int fd = connect_to(t.port);
  send_all(fd, "GET /stream HTTP/1.1\r\n\r\n");
  EXPECT_NE(read_for(fd, "tick", 2, 2000ms).find("tick"), std::string::npos);
  shutdown(fd, SHUT_WR);  // half-close: nobody is assumed to be left to read
  const auto end = std::chrono::steady_clock::now() + 2s;
  while (t.gone == 0 && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(t.gone, 1);
  close(fd);
  // A request followed at once by a half-close is never handed to the handler, or (when the request
  // was read before the FIN arrived) its handler learns at once that the client is gone.
  const int before = t.handled, gone_before = t.gone;
  fd = connect_to(t.port);
  send_all(fd, "GET /stream HTTP/1.1\r\n\r\n");
  shutdown(fd, SHUT_WR);
  std::this_thread::sleep_for(300ms);
  EXPECT_TRUE(t.handled == before || t.gone == gone_before + 1) << t.handled << " " << t.gone;
  close(fd);
}

TEST(HttpFront, SlowClientsDoNotStallOthersAndTimeOut) {
  FrontOptions o;
  o.read_timeout_s = 1.0;
  TestFront t(o);
  // 300 clients drip a request head byte by byte; another must still be answered at once.
  std::vector<int> slow;
  for (int i = 0; i < 300; i++) {
    const int fd = connect_to(t.port);
    ASSERT_GE(fd, 0);
    send_all(fd, "G");
    slow.push_back(fd);
  }
  for (int round = 0; round < 3; round++) {
    for (int fd : slow) send(fd, "E", 1, MSG_NOSIGNAL);
    const auto t0 = std::chrono::steady_clock::now();
    const int fd = connect_to(t.port);
    send_all(fd, "GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
    const std::string got = read_for(fd, "GET /health", 1, 2000ms);
    EXPECT_NE(got.find("200"), std::string::npos) << got;
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 500ms);
    close(fd);
    std::this_thread::sleep_for(100ms);
  }
  // A dripper's whole request has a deadline (not each read): 408 after ~1 s, then closed.
  const std::string got = read_for(slow[0], "408", 1, 3000ms);
  EXPECT_NE(got.find("HTTP/1.1 408"), std::string::npos) << got;
  for (int fd : slow) close(fd);
}

TEST(HttpFront, FullTableDropsTheSlowestReader) {
  FrontOptions o;
  o.max_connections = 16;
  TestFront t(o);
  std::vector<int> slow;
  for (int i = 0; i < 40; i++) {  // more than the table holds
    const int fd = connect_to(t.port);
    ASSERT_GE(fd, 0);
    send_all(fd, "GET /slow");
    slow.push_back(fd);
    std::this_thread::sleep_for(2ms);
  }
  std::this_thread::sleep_for(100ms);
  EXPECT_LE(t.f->connections(), 16u);
  const int fd = connect_to(t.port);
  send_all(fd, "GET /fast HTTP/1.1\r\nConnection: close\r\n\r\n");
  EXPECT_NE(read_for(fd, "GET /fast", 1, 2000ms).find("200"), std::string::npos);
  close(fd);
  // The first (oldest) slow client was dropped with a 408.
  EXPECT_NE(read_for(slow[0], "408", 1, 1000ms).find("HTTP/1.1 408"), std::string::npos);
  for (int s : slow) close(s);
}

TEST(HttpFront, HeadAndHttp10) {
  TestFront t;
  int fd = connect_to(t.port);
  send_all(fd, "HEAD /h HTTP/1.1\r\nConnection: close\r\n\r\n");
  std::string got = read_for(fd, "\x01never", 1, 1000ms);
  EXPECT_NE(got.find("Content-Length: 8"), std::string::npos) << got;  // "HEAD /h "
  EXPECT_EQ(got.find("HEAD /h "), std::string::npos) << got;          // but no body
  close(fd);
  fd = connect_to(t.port);
  send_all(fd, "GET /stream HTTP/1.0\r\n\r\n");
  got = read_for(fd, "tick", 3, 2000ms);
  EXPECT_EQ(got.find("chunked"), std::string::npos) << got;  // 1.0: close-delimited
  EXPECT_NE(got.find("Connection: close"), std::string::npos) << got;
  close(fd);
}

}  // namespace
