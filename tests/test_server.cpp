// `skymoe serve`: the OpenAI-compatible server run in-process on a free loopback port, with a tiny
// random model and a SentencePiece tokenizer trained here, driven by httplib clients and raw
// sockets. Greedy outputs are checked against the Engine driven directly; streaming against
// non-streaming; every bad request against its status and JSON error; plus disconnects, timeouts,
// engine failures, the queue limit and shutdown (in-process and SIGTERM to the real binary).
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <csignal>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/rng.h"
#include "infer/api.h"
#include "infer/engine.h"
#include "infer/output_text.h"
#include "infer/server.h"
#include "io/chat_template.h"
#include "io/tokenizer.h"
#include "model/model.h"
#include "model/params.h"
#include "model/transformer.h"
#include "ref.h"

extern char** environ;

using namespace sky;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

// ---- fixture: model directory with tokenizer.model, loaded once --------------------------------

struct Fixture {
  std::string dir;
  Tokenizer tok;
  InferModel im;
};

std::string make_corpus() {
  const std::vector<std::string> words = {
      "the",    "model", "expert", "router", "token", "layer", "gating", "sparse", "mixture", "training", "quick",
      "brown",  "fox",   "jumps",  "over",   "lazy",  "dog",   "loss",   "batch",  "of",      "and",      "to",
      "in",     "is",    "with",   "MoE",    "says",  "User",  "hello",  "world",  "42",      "data",     "我们",
      "!",      "?",     ","};
  Rng rng(11);
  std::string s;
  for (int line = 0; line < 1500; line++) {
    int n = 3 + int(rng.below(12));
    for (int w = 0; w < n; w++) s += (w ? " " : "") + words[rng.below(words.size())];
    s += ".\n";
  }
  return s;
}

bool g_fixture_made = false;

const Fixture& fx() {
  static Fixture f = [] {
    g_fixture_made = true;
    Fixture r;
    r.dir = skytest::temp_dir("server");
    {
      std::ofstream(r.dir + "/corpus.txt") << make_corpus();
    }
    // Rare characters (most CJK here) fall back to byte pieces: multi-byte text gets streamed too.
    r.tok = Tokenizer::train({r.dir + "/corpus.txt"}, r.dir + "/tokenizer.model", 320);
    ModelConfig c = ModelConfig::preset("tiny");
    c.vocab_size = r.tok.vocab_size();  // the model speaks the tokenizer's ids
    Model m = Model::random(c, 3);
    // Larger weights than the init: sharper logits, so greedy text varies instead of looping.
    auto noise = skytest::randn(m.layout.total, 4, 0.15);
    for (auto& sp : m.layout.specs)
      for (size_t i = 0; i < sp.numel(); i++)
        m.params[sp.offset + i] = sp.shape.size() == 1 ? float(1 + 0.1 * noise[sp.offset + i]) : float(noise[sp.offset + i]);
    // A zero LM-head row gives eos logit 0 while some other logit is almost surely positive: greedy
    // text never ends early, so the long requests below really run long.
    const ParamSpec* head = m.layout.find("lm_head.weight");
    std::fill_n(m.params.data() + head->offset + size_t(c.eos_token_id) * c.hidden_size, c.hidden_size, 0.0f);
    m.save(r.dir);
    r.im = InferModel::load(r.dir);
    return r;
  }();
  return f;
}

// Removes the model directory once every test has run.
struct Cleanup : ::testing::Environment {
  void TearDown() override {
    if (g_fixture_made) std::filesystem::remove_all(fx().dir);
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new Cleanup);
// A client writing into a connection the server closed after an error gets EPIPE, not death.
const auto kNoSigpipe = std::signal(SIGPIPE, SIG_IGN);

// ---- a server on its own thread ------------------------------------------------------------------

struct Running {
  std::unique_ptr<Server> srv;
  std::thread th;
  int port = 0;
  explicit Running(ServerOptions o = {}, bool with_tokenizer = true, const InferModel* m = nullptr) {
    o.host = "127.0.0.1";
    o.port = 0;
    o.model_name = "tiny-test";
    if (!o.log_line) o.log_requests = false;  // quiet unless a test collects the lines
    std::optional<Tokenizer> t;
    if (with_tokenizer) t = fx().tok;
    srv = std::make_unique<Server>(m ? *m : fx().im, t, o);
    port = srv->bind();
    th = std::thread([this] { srv->run(); });
  }
  ~Running() {
    srv->stop();
    th.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_connection_timeout(2);
    c.set_read_timeout(20);
    return c;
  }
  struct Reply {
    int status = -1;
    std::string body;
    json j;  // the body parsed, when it is JSON
    std::string header(const std::string& k) const { return headers.count(k) ? headers.find(k)->second : ""; }
    httplib::Headers headers;
  };
  Reply post(const std::string& path, const std::string& body) const {
    auto c = client();
    return reply(c.Post(path.c_str(), body, "application/json"));
  }
  Reply post(const std::string& path, const json& body) const { return post(path, body.dump()); }
  Reply get(const std::string& path) const {
    auto c = client();
    return reply(c.Get(path.c_str()));
  }
  static Reply reply(const httplib::Result& r) {
    Reply out;
    if (!r) {
      ADD_FAILURE() << "request failed: " << httplib::to_string(r.error());
      return out;
    }
    out.status = r->status;
    out.body = r->body;
    out.headers = r->headers;
    if (r->get_header_value("Content-Type") == "application/json") out.j = json::parse(r->body);
    return out;
  }
  std::string metrics() const { return srv->metrics_text(); }
};

// The value of one metric line ("name{labels} value"), or -1 when absent.
double metric(const std::string& text, const std::string& series) {
  size_t p = text.find("\n" + series + " ");
  if (p == std::string::npos) return -1;
  return std::stod(text.substr(p + series.size() + 2));
}

// Polls `cond` for up to `limit`.
template <class F>
bool eventually(F cond, std::chrono::milliseconds limit = 5000ms) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return cond();
}

// ---- SSE -------------------------------------------------------------------------------------------

struct Sse {
  std::vector<json> chunks;  // every data event but [DONE]
  bool done = false;         // ended with data: [DONE]
};

Sse parse_sse(const std::string& body) {
  Sse s;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    if (end == std::string::npos) {
      ADD_FAILURE() << "unterminated event: " << body.substr(pos);
      break;
    }
    std::string ev = body.substr(pos, end - pos);
    pos = end + 2;
    EXPECT_EQ(ev.rfind("data: ", 0), 0u) << ev;
    std::string data = ev.substr(6);
    EXPECT_FALSE(s.done) << "event after [DONE]";
    if (data == "[DONE]") {
      s.done = true;
      continue;
    }
    s.chunks.push_back(json::parse(data));
  }
  return s;
}

// Text of a stream: completions' "text" or chat's delta.content, concatenated.
std::string stream_text(const Sse& s, bool chat) {
  std::string t;
  for (const auto& c : s.chunks) {
    if (!c.contains("choices") || c["choices"].empty()) continue;
    const json& ch = c["choices"][0];
    if (chat) {
      if (ch["delta"].contains("content")) t += ch["delta"]["content"].get<std::string>();
    } else {
      t += ch["text"].get<std::string>();
    }
  }
  return t;
}

// ---- raw sockets (to hang up mid-stream) -----------------------------------------------------------

struct RawConn {
  int fd = -1;
  std::string data;
  RawConn(int port, const std::string& path, const std::string& body) {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    std::string req = "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: " +
                      std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
    EXPECT_EQ(send(fd, req.data(), req.size(), MSG_NOSIGNAL), ssize_t(req.size()));
  }
  // Reads until `needle` shows up (true), EOF or the time limit (false).
  bool read_until(const std::string& needle, std::chrono::milliseconds limit = 5000ms) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (data.find(needle) == std::string::npos) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()).count();
      if (left <= 0) return false;
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, int(left)) <= 0) return false;
      char buf[4096];
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n <= 0) return false;
      data.append(buf, size_t(n));
    }
    return true;
  }
  bool read_to_eof(std::chrono::milliseconds limit = 5000ms) { return !read_until("\x01never\x02", limit) && closed(); }
  bool closed() {
    pollfd p{fd, POLLIN, 0};
    char c;
    return poll(&p, 1, 0) == 1 && recv(fd, &c, 1, MSG_PEEK) <= 0;
  }
  void close_now() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  ~RawConn() { close_now(); }
};

// ---- expectations ----------------------------------------------------------------------------------

std::vector<int32_t> with_bos(const std::string& text) {
  std::vector<int32_t> ids = {fx().tok.bos_id()};
  auto t = fx().tok.encode(text);
  ids.insert(ids.end(), t.begin(), t.end());
  return ids;
}

// Greedy generation through the Engine directly, decoded the way a client should see it.
struct Direct {
  std::vector<int32_t> ids;
  std::string text, finish;
};
Direct direct(const std::vector<int32_t>& prompt, int max_tokens) {
  Engine e(fx().im, {1, 4096});
  GenParams p;
  p.max_tokens = max_tokens;
  Direct d;
  e.submit(prompt, p, [&](const TokenEvent& ev) {
    if (ev.token >= 0 && !(ev.done && ev.finish_reason == "stop")) d.ids.push_back(ev.token);
    if (ev.done) d.finish = ev.finish_reason;
    return true;
  });
  e.run_until_idle();
  StreamDecoder dec(fx().tok, false);
  for (int32_t t : d.ids) d.text += dec.push(t);
  d.text = valid_utf8(d.text + dec.flush());
  return d;
}

json completion(const std::string& prompt, int max_tokens, bool stream = false) {
  return {{"model", "tiny-test"}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}, {"stream", stream}};
}

// log_softmax of the training forward's logits over `ids` (row i scores token i + 1): a path
// independent of the engine, for the server's log-probabilities.
std::vector<std::vector<double>> reference_logprobs(const std::vector<int32_t>& ids) {
  static const Model m = Model::load(fx().dir);
  Activations A;
  forward(m, A, ids.data(), nullptr, 1, int(ids.size()), moe_options(m.cfg));
  const int V = m.cfg.vocab_size;
  std::vector<std::vector<double>> out;
  for (size_t i = 0; i < ids.size(); i++) {
    const float* x = A.logits.data() + i * V;
    double mx = *std::max_element(x, x + V), sum = 0;
    for (int k = 0; k < V; k++) sum += std::exp(double(x[k]) - mx);
    std::vector<double> row(V);
    for (int k = 0; k < V; k++) row[k] = double(x[k]) - mx - std::log(sum);
    out.push_back(std::move(row));
  }
  return out;
}

// Greedy ids as the server's logprobs list them: the generated tokens, eos included.
std::vector<int32_t> listed_ids(const Direct& d) {
  std::vector<int32_t> ids = d.ids;
  if (d.finish == "stop") ids.push_back(fx().im.cfg.eos_token_id);
  return ids;
}

// Concatenates the per-chunk logprobs of a stream (completions' parallel arrays, or chat's content).
json stream_logprobs(const Sse& s, bool chat) {
  json all = chat ? json{{"content", json::array()}}
                  : json{{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
                         {"text_offset", json::array()}};
  for (const auto& c : s.chunks) {
    if (!c.contains("choices") || c["choices"].empty() || c["choices"][0]["logprobs"].is_null()) continue;
    const json& lp = c["choices"][0]["logprobs"];
    for (auto& [k, v] : all.items())
      for (const auto& e : lp[k]) v.push_back(e);
  }
  return all;
}

int64_t utf8_chars(const std::string& s) {
  return std::count_if(s.begin(), s.end(), [](char c) { return (uint8_t(c) & 0xC0) != 0x80; });
}

const std::vector<std::string> kPrompts = {"the quick brown fox", "mixture of experts", "router and token", "hello world",
                                           "我们 语言 model",      "sparse gating loss",  "lazy dog jumps",   "batch of data"};

}  // namespace

// ---- pieces without a server -------------------------------------------------------------------------

TEST(ServerText, StopStringsAcrossPieces) {
  StopMatcher m({"\nUser:"});
  EXPECT_EQ(m.push("Hel"), "Hel");
  EXPECT_EQ(m.push("lo\nUs"), "lo");  // "\nUs" might begin the stop string: held
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.push("er: more"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.push("ignored"), "");
  EXPECT_EQ(m.finish(), "");

  StopMatcher n({"ab", "xyz"});
  EXPECT_EQ(n.push("1x"), "1");
  EXPECT_EQ(n.push("y"), "");
  EXPECT_EQ(n.push("q"), "xyq");  // not a stop after all: released
  EXPECT_EQ(n.push("a"), "");
  EXPECT_EQ(n.finish(), "a");  // generation ended with a partial match: it is output
  StopMatcher both({"cd", "bcd"});
  EXPECT_EQ(both.push("abcde"), "a");  // the earliest match wins
}

TEST(ServerText, Utf8AndChatTemplate) {
  EXPECT_EQ(valid_utf8("ok é 🙂"), "ok é 🙂");
  EXPECT_EQ(valid_utf8("a\xff" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(valid_utf8("\xC0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong
  EXPECT_EQ(valid_utf8("\xF0\x9F"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // cut short
  EXPECT_EQ(chat_prompt({{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "Why?"}}),
            "System: Be brief.\nUser: Hi\nAssistant: Hello.\nUser: Why?\nAssistant:");
}

// ---- endpoints ---------------------------------------------------------------------------------------

TEST(Server, CompletionMatchesEngineAndIsDeterministic) {
  Running s;
  const std::string prompt = "the quick brown fox";
  auto r = s.post("/v1/completions", completion(prompt, 24));
  ASSERT_EQ(r.status, 200) << r.body;
  const json& j = r.j;
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "tiny-test");
  EXPECT_EQ(j["id"].get<std::string>().rfind("cmpl-", 0), 0u);
  EXPECT_TRUE(j["created"].is_number_integer());
  ASSERT_EQ(j["choices"].size(), 1u);
  const json& c = j["choices"][0];
  EXPECT_EQ(c["index"], 0);
  EXPECT_FALSE(c.contains("token_ids"));  // only servers without a tokenizer send ids

  Direct d = direct(with_bos(prompt), 24);
  EXPECT_EQ(c["text"], d.text);
  EXPECT_EQ(c["finish_reason"], d.finish);
  EXPECT_GT(d.text.size(), 10u) << "the test model should say something";
  EXPECT_EQ(j["usage"]["prompt_tokens"], with_bos(prompt).size());
  EXPECT_EQ(j["usage"]["completion_tokens"], d.ids.size() + (d.finish == "stop" ? 1 : 0));  // eos counts
  EXPECT_EQ(j["usage"]["total_tokens"], j["usage"]["prompt_tokens"].get<int>() + j["usage"]["completion_tokens"].get<int>());
  if (d.finish == "length") {
    EXPECT_EQ(j["usage"]["completion_tokens"], 24);
  }

  auto again = s.post("/v1/completions", completion(prompt, 24));
  EXPECT_EQ(again.j["choices"][0]["text"], c["text"]);
  EXPECT_NE(again.j["id"], j["id"]);
  // The prompt as token ids, and as an array holding one string, give the same answer.
  json ids = completion(prompt, 24);
  ids["prompt"] = with_bos(prompt);
  EXPECT_EQ(s.post("/v1/completions", ids).j["choices"][0]["text"], c["text"]);
  json one = completion(prompt, 24);
  one["prompt"] = json::array({prompt});
  EXPECT_EQ(s.post("/v1/completions", one).j["choices"][0]["text"], c["text"]);
}

TEST(Server, StreamingMatchesNonStreaming) {
  Running s;
  for (const std::string prompt : {"mixture of experts", "我们 语言 model"}) {
    auto plain = s.post("/v1/completions", completion(prompt, 30));
    ASSERT_EQ(plain.status, 200);
    json req = completion(prompt, 30, true);
    req["stream_options"] = {{"include_usage", true}};
    auto r = s.post("/v1/completions", req);
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(r.header("Content-Type"), "text/event-stream");
    Sse sse = parse_sse(r.body);
    EXPECT_TRUE(sse.done);
    ASSERT_GE(sse.chunks.size(), 3u);
    EXPECT_EQ(stream_text(sse, false), plain.j["choices"][0]["text"]);
    for (size_t i = 0; i + 2 < sse.chunks.size(); i++) {  // token chunks
      EXPECT_EQ(sse.chunks[i]["object"], "text_completion");
      EXPECT_EQ(sse.chunks[i]["id"], sse.chunks[0]["id"]);
      EXPECT_TRUE(sse.chunks[i]["choices"][0]["finish_reason"].is_null());
      EXPECT_FALSE(sse.chunks[i]["choices"][0]["text"].get<std::string>().empty());
    }
    const json& fin = sse.chunks[sse.chunks.size() - 2];
    EXPECT_EQ(fin["choices"][0]["finish_reason"], plain.j["choices"][0]["finish_reason"]);
    const json& usage = sse.chunks.back();
    EXPECT_TRUE(usage["choices"].empty());
    EXPECT_EQ(usage["usage"], plain.j["usage"]);
  }
}

TEST(Server, StopStrings) {
  Running s;
  auto plain = s.post("/v1/completions", completion("lazy dog jumps", 40));
  const std::string text = plain.j["choices"][0]["text"];
  // A stop string from the middle of the greedy text: the output must end right before its first
  // occurrence, streaming or not.
  std::string stop;
  for (size_t i = text.size() / 3; i + 2 < text.size() && stop.empty(); i++)
    if (std::isalpha(uint8_t(text[i])) && std::isalpha(uint8_t(text[i + 1]))) stop = text.substr(i, 2);
  ASSERT_FALSE(stop.empty()) << text;
  const std::string want = text.substr(0, text.find(stop));
  json req = completion("lazy dog jumps", 40);
  req["stop"] = json::array({"never-appears", stop});
  auto r = s.post("/v1/completions", req);
  EXPECT_EQ(r.j["choices"][0]["text"], want);
  EXPECT_EQ(r.j["choices"][0]["finish_reason"], "stop");
  EXPECT_LT(r.j["usage"]["completion_tokens"].get<int>(), 40);
  req["stream"] = true;
  Sse sse = parse_sse(s.post("/v1/completions", req).body);
  EXPECT_EQ(stream_text(sse, false), want);
  EXPECT_EQ(sse.chunks.back()["choices"][0]["finish_reason"], "stop");
}

TEST(Server, ChatBothModes) {
  Running s;
  json msgs = json::array({{{"role", "system"}, {"content", "You are terse."}},
                           {{"role", "user"}, {"content", "hello world"}}});
  json req = {{"model", "tiny-test"}, {"messages", msgs}, {"max_tokens", 20}, {"temperature", 0}};
  auto r = s.post("/v1/chat/completions", req);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.j["object"], "chat.completion");
  EXPECT_EQ(r.j["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  const json& msg = r.j["choices"][0]["message"];
  EXPECT_EQ(msg["role"], "assistant");
  const std::string content = msg["content"];
  EXPECT_EQ(r.j["usage"]["prompt_tokens"], with_bos("System: You are terse.\nUser: hello world\nAssistant:").size());
  // The reply is the model's continuation of the template, less the space after "Assistant:".
  Direct d = direct(with_bos("System: You are terse.\nUser: hello world\nAssistant:"), 20);
  std::string want = d.text.rfind(' ', 0) == 0 ? d.text.substr(1) : d.text;
  want = want.substr(0, want.find("\nUser:"));
  EXPECT_EQ(content, want);

  req["stream"] = true;
  auto st = s.post("/v1/chat/completions", req);
  ASSERT_EQ(st.status, 200);
  Sse sse = parse_sse(st.body);
  EXPECT_TRUE(sse.done);
  ASSERT_GE(sse.chunks.size(), 2u);
  EXPECT_EQ(sse.chunks[0]["object"], "chat.completion.chunk");
  EXPECT_EQ(sse.chunks[0]["choices"][0]["delta"]["role"], "assistant");
  for (size_t i = 1; i < sse.chunks.size(); i++) EXPECT_FALSE(sse.chunks[i]["choices"][0]["delta"].contains("role"));
  EXPECT_EQ(stream_text(sse, true), content);
  EXPECT_EQ(sse.chunks.back()["choices"][0]["finish_reason"], r.j["choices"][0]["finish_reason"]);
  EXPECT_TRUE(sse.chunks.back()["choices"][0]["delta"].empty());
  // Content as text parts, and OpenAI's "developer" role, are accepted.
  json parts = req;
  parts["stream"] = false;
  parts["messages"] = json::array({{{"role", "developer"}, {"content", "You are terse."}},
                                   {{"role", "user"}, {"content", json::array({{{"type", "text"}, {"text", "hello "}},
                                                                               {{"type", "text"}, {"text", "world"}}})}}});
  EXPECT_EQ(s.post("/v1/chat/completions", parts).j["choices"][0]["message"]["content"], content);
}

TEST(Server, ModelsHealthMetrics) {
  Running s;
  auto m = s.get("/v1/models");
  ASSERT_EQ(m.status, 200);
  EXPECT_EQ(m.j["object"], "list");
  ASSERT_EQ(m.j["data"].size(), 1u);
  EXPECT_EQ(m.j["data"][0]["id"], "tiny-test");
  EXPECT_EQ(m.j["data"][0]["object"], "model");
  EXPECT_EQ(s.get("/v1/models/tiny-test").status, 200);
  auto other = s.get("/v1/models/gpt-4");
  EXPECT_EQ(other.status, 404);
  EXPECT_EQ(other.j["error"]["code"], "model_not_found");

  auto h = s.get("/health");
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.j, json({{"status", "ok"}}));

  ASSERT_EQ(s.post("/v1/completions", completion("hello world", 8)).status, 200);
  ASSERT_EQ(s.post("/v1/completions", completion("hello world", 8, true)).status, 200);
  EXPECT_EQ(s.post("/v1/completions", json{{"prompt", 5}}).status, 400);
  // The server counts a request once its last byte is out, which may be just after the client has it.
  // So does the engine with its stats, at the end of the step that finished the request.
  ASSERT_TRUE(eventually([&] {
    auto m = s.metrics();
    return metric(m, "skymoe_request_duration_seconds_count") == 3 && metric(m, "skymoe_kv_used_tokens") == 0;
  }));
  auto r = s.get("/metrics");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.header("Content-Type").rfind("text/plain", 0), 0u);
  const std::string& t = r.body;
  EXPECT_EQ(metric(t, "skymoe_requests_total{endpoint=\"/v1/completions\",status=\"200\"}"), 2);
  EXPECT_EQ(metric(t, "skymoe_requests_total{endpoint=\"/v1/completions\",status=\"400\"}"), 1);
  EXPECT_EQ(metric(t, "skymoe_requests_total{endpoint=\"/health\",status=\"200\"}"), 1);
  EXPECT_EQ(metric(t, "skymoe_prompt_tokens_total"), 2.0 * with_bos("hello world").size());
  EXPECT_GE(metric(t, "skymoe_generated_tokens_total"), 2);
  EXPECT_EQ(metric(t, "skymoe_queue_depth"), 0);
  EXPECT_EQ(metric(t, "skymoe_active_sequences"), 0);
  EXPECT_GE(metric(t, "skymoe_batch_size"), 1);
  EXPECT_EQ(metric(t, "skymoe_kv_used_tokens"), 0);
  EXPECT_EQ(metric(t, "skymoe_kv_budget_tokens"), 32768);
  EXPECT_EQ(metric(t, "skymoe_request_duration_seconds_count"), 3);  // generation endpoints only
  EXPECT_EQ(metric(t, "skymoe_request_duration_seconds_bucket{le=\"+Inf\"}"), 3);
  EXPECT_EQ(metric(t, "skymoe_time_to_first_token_seconds_count"), 2);
  EXPECT_NE(t.find("# TYPE skymoe_time_to_first_token_seconds histogram"), std::string::npos);
  EXPECT_EQ(metric(t, "skymoe_requests_cancelled_total{reason=\"disconnect\"}"), 0);
}

TEST(Server, ConcurrentClientsMatchSequential) {
  Running s;
  std::vector<std::string> seq;
  for (const auto& p : kPrompts) seq.push_back(s.post("/v1/completions", completion(p, 20)).j["choices"][0]["text"]);
  std::vector<std::string> par(kPrompts.size());
  std::vector<int> status(kPrompts.size(), -1);
  std::vector<std::thread> ts;
  for (size_t i = 0; i < kPrompts.size(); i++)
    ts.emplace_back([&, i] {
      const bool stream = i % 2 == 1;  // half of them stream
      auto c = s.client();
      auto r = c.Post("/v1/completions", completion(kPrompts[i], 20, stream).dump(), "application/json");
      if (!r) return;
      status[i] = r->status;
      par[i] = stream ? stream_text(parse_sse(r->body), false) : json::parse(r->body)["choices"][0]["text"].get<std::string>();
    });
  for (auto& t : ts) t.join();
  for (size_t i = 0; i < kPrompts.size(); i++) {
    EXPECT_EQ(status[i], 200) << i;
    EXPECT_EQ(par[i], seq[i]) << kPrompts[i];
  }
  EXPECT_GE(metric(s.metrics(), "skymoe_engine_steps_total"), 1);
}

TEST(Server, BadRequestsGetJsonErrors) {
  ServerOptions o;
  o.max_body_bytes = 64 << 10;
  o.max_prompt_tokens = 32;
  o.max_tokens_limit = 1000;
  Running s(o);
  struct Case {
    const char* path;
    std::string body;
    int status;
    const char* param;  // "" = null
    const char* code;
  };
  const std::string C = "/v1/completions", CH = "/v1/chat/completions";
  std::vector<int> long_prompt(100, 5);
  std::string long_text;
  while (long_text.size() < (60 << 10)) long_text += "the quick brown fox jumps over the lazy dog. ";
  const std::vector<Case> cases = {
      {C.c_str(), R"({"prompt": "hi", )", 400, "", "invalid_json"},
      {C.c_str(), "", 400, "", "invalid_json"},
      {C.c_str(), "[1, 2]", 400, "", "invalid_json"},
      {C.c_str(), R"({"prompt": "hi", "max_tokens": "ten"})", 400, "max_tokens", "invalid_type"},
      {C.c_str(), R"({"prompt": "hi", "max_tokens": 10.5})", 400, "max_tokens", "invalid_type"},
      {C.c_str(), R"({"prompt": "hi", "temperature": "hot"})", 400, "temperature", "invalid_type"},
      {C.c_str(), R"({"prompt": "hi", "temperature": 7})", 400, "temperature", "invalid_value"},
      {C.c_str(), R"({"prompt": "hi", "top_p": 1.5})", 400, "top_p", "invalid_value"},
      {C.c_str(), R"({"prompt": "hi", "stream": "yes"})", 400, "stream", "invalid_type"},
      {C.c_str(), R"({"max_tokens": 5})", 400, "prompt", "missing_required_parameter"},
      {C.c_str(), R"({"prompt": 42})", 400, "prompt", "invalid_type"},
      {C.c_str(), R"({"prompt": []})", 400, "prompt", "invalid_value"},
      {C.c_str(), R"({"prompt": ["a", "b"]})", 400, "prompt", "unsupported_parameter"},
      {C.c_str(), R"({"prompt": "hi", "max_tokens": -3})", 400, "max_tokens", "invalid_value"},
      {C.c_str(), R"({"prompt": "hi", "max_tokens": 0})", 400, "max_tokens", "invalid_value"},
      {C.c_str(), R"({"prompt": "hi", "max_tokens": 99999999999999999999})", 400, "max_tokens", ""},
      {C.c_str(), R"({"prompt": "hi", "max_tokens": 5000})", 400, "max_tokens", "invalid_value"},  // over the limit
      {C.c_str(), R"({"prompt": "hi", "max_tokens": 600})", 400, "max_tokens", "context_length_exceeded"},
      {C.c_str(), R"({"prompt": "hi", "model": "gpt-4"})", 404, "model", "model_not_found"},
      {C.c_str(), R"({"prompt": "hi", "model": 7})", 400, "model", "invalid_type"},
      {C.c_str(), "{\"prompt\": \"bad \xff\xfe bytes\"}", 400, "", "invalid_json"},
      {C.c_str(), R"({"prompt": "lone \ud800 surrogate"})", 400, "", "invalid_json"},
      // Once 500 (the number's overflow escaped the parse-error handler); clients retry a 5xx.
      {C.c_str(), R"({"prompt": "hi", "max_tokens": 1e999})", 400, "", "invalid_json"},
      {C.c_str(), "{\"prompt\": " + std::string(5000, '[') + std::string(5000, ']') + "}", 400, "", "invalid_json"},
      {C.c_str(), json{{"prompt", long_prompt}}.dump(), 400, "prompt", "context_length_exceeded"},
      {C.c_str(), R"({"prompt": [1, 320]})", 400, "prompt", "invalid_value"},  // vocabulary: 320
      {C.c_str(), R"({"prompt": [1, -1]})", 400, "prompt", "invalid_value"},
      {C.c_str(), R"({"prompt": [1, 2.5]})", 400, "prompt", "invalid_type"},
      {C.c_str(), R"({"prompt": "hi", "n": 2})", 400, "n", "unsupported_parameter"},
      {C.c_str(), R"({"prompt": "hi", "echo": "yes"})", 400, "echo", "invalid_type"},
      {C.c_str(), R"({"prompt": "hi", "logprobs": -1})", 400, "logprobs", "invalid_value"},
      {C.c_str(), R"({"prompt": "hi", "logprobs": 100})", 400, "logprobs", "invalid_value"},
      {C.c_str(), R"({"prompt": "hi", "logprobs": "3"})", 400, "logprobs", "invalid_type"},
      {C.c_str(), R"({"prompt": "hi", "logprobs": 2.5})", 400, "logprobs", "invalid_type"},
      {C.c_str(), R"({"prompt": "hi", "logprobs": true})", 400, "logprobs", "invalid_type"},
      {C.c_str(), R"({"prompt": "hi", "max_tokens": -1, "echo": true})", 400, "max_tokens", "invalid_value"},
      // A text prompt far over the limit: refused as too long before it is tokenized.
      {C.c_str(), json{{"prompt", long_text}}.dump(), 400, "prompt", "context_length_exceeded"},
      {CH.c_str(), json{{"messages", {{{"role", "user"}, {"content", long_text}}}}}.dump(), 400, "messages",
       "context_length_exceeded"},
      {CH.c_str(), R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 1})", 400, "logprobs", "invalid_type"},
      {CH.c_str(), R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21})", 400,
       "top_logprobs", "invalid_value"},
      {CH.c_str(), R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": -1})", 400,
       "top_logprobs", "invalid_value"},
      {CH.c_str(), R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", 400, "top_logprobs",
       "invalid_value"},
      {C.c_str(), R"({"prompt": "hi", "stop": 5})", 400, "stop", "invalid_type"},
      {C.c_str(), R"({"prompt": "hi", "stop": [""]})", 400, "stop", "invalid_value"},
      {C.c_str(), R"({"prompt": "hi", "stream_options": {"include_usage": true}})", 400, "stream_options", "invalid_value"},
      {C.c_str(), R"({"prompt": "hi", "presence_penalty": 0.5})", 400, "presence_penalty", "unsupported_parameter"},
      {CH.c_str(), R"({"max_tokens": 5})", 400, "messages", "missing_required_parameter"},
      {CH.c_str(), R"({"messages": "hi"})", 400, "messages", "invalid_type"},
      {CH.c_str(), R"({"messages": []})", 400, "messages", "invalid_value"},
      {CH.c_str(), R"({"messages": [{"role": "wizard", "content": "x"}]})", 400, "messages[0].role", "invalid_value"},
      {CH.c_str(), R"({"messages": [{"content": "x"}]})", 400, "messages[0].role", "missing_required_parameter"},
      {CH.c_str(), R"({"messages": [{"role": "user", "content": 5}]})", 400, "messages[0].content", "invalid_type"},
      {CH.c_str(), R"({"messages": [{"role": "user", "content": "x"}], "n": 3})", 400, "n", "unsupported_parameter"},
      {CH.c_str(), R"({"messages": [{"role": "user", "content": "x"}], "tools": []})", 400, "tools", "unsupported_parameter"},
      {CH.c_str(), std::string(70 << 10, ' '), 413, "", "request_too_large"},
  };
  for (const auto& c : cases) {
    auto r = s.post(c.path, c.body);
    SCOPED_TRACE(std::string(c.path) + " " + c.body.substr(0, 80));
    EXPECT_EQ(r.status, c.status) << r.body;
    ASSERT_TRUE(r.j.contains("error")) << r.body;
    const json& e = r.j["error"];
    EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty());
    EXPECT_EQ(e["type"], c.status >= 500 ? "server_error" : "invalid_request_error");
    if (*c.param)
      EXPECT_EQ(e["param"], c.param);
    else
      EXPECT_TRUE(e["param"].is_null()) << e;
    if (*c.code) {
      EXPECT_EQ(e["code"], c.code);
    }
  }
  // Routing errors are JSON too.
  auto nf = s.get("/v1/nothing");
  EXPECT_EQ(nf.status, 404);
  EXPECT_EQ(nf.j["error"]["code"], "not_found");
  auto na = s.get("/v1/completions");
  EXPECT_EQ(na.status, 405);
  EXPECT_EQ(na.header("Allow"), "POST");
  EXPECT_EQ(na.j["error"]["code"], "method_not_allowed");
  auto c = s.client();
  auto del = c.Delete("/health");
  ASSERT_TRUE(del);
  EXPECT_EQ(del->status, 405);
  // A chunked upload is held to the size limit too.
  auto big = c.Post("/v1/completions", httplib::ContentProviderWithoutLength([](size_t offset, httplib::DataSink& sink) {
                      std::string part(16 << 10, ' ');
                      if (offset < (128u << 10)) return sink.write(part.data(), part.size());
                      sink.done();
                      return true;
                    }),
                    "application/json");
  if (big) {  // the server may also just close the connection
    EXPECT_EQ(big->status, 413);
  }
  // The server is still fine.
  EXPECT_EQ(s.post("/v1/completions", completion("hello world", 4)).status, 200);
  EXPECT_EQ(s.get("/health").status, 200);
}

TEST(Server, DisconnectMidStreamCancels) {
  ServerOptions o;
  o.before_step = [] { std::this_thread::sleep_for(3ms); };  // ~1.5 s for the whole request
  Running s(o);
  {
    RawConn conn(s.port, "/v1/completions", completion("the quick brown fox", 480, true).dump());
    ASSERT_TRUE(conn.read_until("data: {")) << conn.data;
    EXPECT_NE(conn.data.find("text/event-stream"), std::string::npos);
  }  // hung up after the first chunk
  EXPECT_TRUE(eventually([&] { return s.srv->cancelled("disconnect") == 1 && s.srv->engine_stats().active == 0; }));
  EXPECT_LT(s.srv->engine_stats().generated_tokens, 400);
  EXPECT_EQ(metric(s.metrics(), "skymoe_requests_cancelled_total{reason=\"disconnect\"}"), 1);
  // Others are still served.
  auto r = s.post("/v1/completions", completion("hello world", 5));
  EXPECT_EQ(r.status, 200);
  // The engine updates its stats at the end of the step that finished the request.
  EXPECT_TRUE(eventually([&] { return s.srv->engine_stats().kv_used_tokens == 0; }));
}

TEST(Server, TimeoutReturnsPartialOutput) {
  ServerOptions o;
  o.timeout_s = 0.3;
  o.before_step = [] { std::this_thread::sleep_for(3ms); };
  Running s(o);
  auto t0 = std::chrono::steady_clock::now();
  auto r = s.post("/v1/completions", completion("the quick brown fox", 480));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.j["choices"][0]["finish_reason"], "length");
  const int n = r.j["usage"]["completion_tokens"];
  EXPECT_GT(n, 0);
  EXPECT_LT(n, 480);
  auto st = s.post("/v1/completions", completion("the quick brown fox", 480, true));
  Sse sse = parse_sse(st.body);
  EXPECT_TRUE(sse.done);
  EXPECT_EQ(sse.chunks.back()["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(s.srv->cancelled("timeout"), 2u);
}

TEST(Server, EngineFailureIs500AndServerRecovers) {
  // A model whose rotary table is shorter than its config: positions past 40 make batch_forward
  // throw inside the engine step, a real engine failure.
  InferModel broken = InferModel::load(fx().dir);
  broken.rope.max_pos = 40;
  Running s({}, true, &broken);
  std::vector<int> longp(50, 7);
  auto r = s.post("/v1/completions", json{{"prompt", longp}, {"max_tokens", 4}});
  EXPECT_EQ(r.status, 500) << r.body;
  EXPECT_EQ(r.j["error"]["type"], "server_error");
  EXPECT_EQ(r.j["error"]["code"], "engine_error");
  EXPECT_EQ(s.get("/health").status, 503);
  auto st = s.post("/v1/completions", json{{"prompt", longp}, {"max_tokens", 4}, {"stream", true}});
  EXPECT_EQ(st.status, 200);  // the stream had started; the error comes as an event
  Sse sse = parse_sse(st.body);
  EXPECT_TRUE(sse.done);
  ASSERT_FALSE(sse.chunks.empty());
  EXPECT_EQ(sse.chunks.back()["error"]["code"], "engine_error");
  EXPECT_EQ(s.post("/v1/completions", completion("hi", 4)).status, 200);
  EXPECT_EQ(s.get("/health").status, 200);
  EXPECT_TRUE(eventually([&] { return metric(s.metrics(), "skymoe_engine_errors_total") == 2; }));
  EXPECT_NE(r.j["error"]["message"].get<std::string>().find("exceeds max_position_embeddings 40"), std::string::npos)
      << r.j;
}

TEST(Server, QueueLimitGives503) {
  ServerOptions o;
  o.max_batch = 1;
  o.queue_limit = 1;
  o.before_step = [] { std::this_thread::sleep_for(3ms); };
  Running s(o);
  RawConn running(s.port, "/v1/completions", completion("the quick brown fox", 480, true).dump());
  ASSERT_TRUE(running.read_until("data: {"));
  // A second request waits for the only batch slot...
  int waited = -1;
  std::thread second([&] { waited = s.post("/v1/completions", completion("hello world", 3)).status; });
  ASSERT_TRUE(eventually([&] { return metric(s.metrics(), "skymoe_queue_depth") == 1; }));
  // ...and a third finds the queue full.
  auto r = s.post("/v1/completions", completion("hello world", 3));
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.j["error"]["code"], "overloaded");
  EXPECT_EQ(r.header("Retry-After"), "1");
  running.close_now();  // frees the slot
  second.join();
  EXPECT_EQ(waited, 200);
}

TEST(Server, NoTokenizerTakesTokenIds) {
  Running s({}, false);
  auto text = s.post("/v1/completions", completion("hello", 4));
  EXPECT_EQ(text.status, 400);
  EXPECT_EQ(text.j["error"]["code"], "no_tokenizer");
  EXPECT_NE(text.j["error"]["message"].get<std::string>().find("tokenizer"), std::string::npos);
  auto chat = s.post("/v1/chat/completions", json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}});
  EXPECT_EQ(chat.status, 400);
  EXPECT_EQ(chat.j["error"]["code"], "no_tokenizer");
  auto prompt = with_bos("hello world");
  auto r = s.post("/v1/completions", json{{"prompt", prompt}, {"max_tokens", 6}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.body;
  Direct d = direct(prompt, 6);
  EXPECT_EQ(r.j["choices"][0]["text"], "");
  std::vector<int32_t> ids = r.j["choices"][0]["token_ids"];
  EXPECT_EQ(ids, d.ids);
  auto st = s.post("/v1/completions", json{{"prompt", prompt}, {"max_tokens", 6}, {"temperature", 0}, {"stream", true}});
  std::vector<int32_t> streamed;
  for (const auto& c : parse_sse(st.body).chunks)
    for (int32_t t : c["choices"][0].value("token_ids", std::vector<int32_t>{})) streamed.push_back(t);
  EXPECT_EQ(streamed, ids);
}

// A client that sends its request and half-closes is gone: its generation never runs (cpp-httplib
// generated the whole answer for nobody).
TEST(Server, HalfClosedClientGetsNoGeneration) {
  ServerOptions o;
  o.before_step = [] { std::this_thread::sleep_for(3ms); };
  Running s(o);
  {
    RawConn conn(s.port, "/v1/completions", completion("the quick brown fox", 400).dump());
    shutdown(conn.fd, SHUT_WR);
    std::this_thread::sleep_for(300ms);
  }
  EXPECT_TRUE(eventually([&] { return s.srv->engine_stats().active == 0 && s.srv->engine_stats().waiting == 0; }));
  EXPECT_LT(s.srv->engine_stats().generated_tokens, 100);
  EXPECT_EQ(s.post("/v1/completions", completion("hello world", 3)).status, 200);
}

// Request targets are outside input: one request is one log line, whatever its bytes.
TEST(Server, LogLinesCannotBeForged) {
  ServerOptions o;
  std::mutex mu;
  std::string logged;
  o.log_line = [&](const std::string& l) {
    std::lock_guard<std::mutex> g(mu);
    logged += l;
  };
  Running s(o);
  EXPECT_EQ(s.get("/v1/models/x%0aPOST%20/v1/completions%20200%0d%0a").status, 404);
  EXPECT_EQ(s.get("/health%0aGET").status, 404);
  EXPECT_TRUE(eventually([&] {
    std::lock_guard<std::mutex> g(mu);
    return std::count(logged.begin(), logged.end(), '\n') >= 2;
  }));
  std::lock_guard<std::mutex> g(mu);
  EXPECT_EQ(std::count(logged.begin(), logged.end(), '\n'), 2) << logged;
  EXPECT_EQ(logged.find("\nPOST"), std::string::npos) << logged;
  EXPECT_EQ(logged.find('\r'), std::string::npos) << logged;
}

TEST(Server, StopCancelsRunningRequestsAndExits) {
  ServerOptions o;
  o.before_step = [] { std::this_thread::sleep_for(3ms); };
  auto s = std::make_unique<Running>(o);
  RawConn stream(s->port, "/v1/completions", completion("the quick brown fox", 480, true).dump());
  ASSERT_TRUE(stream.read_until("data: {"));
  int status = -1;
  json body;
  std::thread plain([&] {
    auto r = s->post("/v1/completions", completion("hello world", 480));
    status = r.status;
    body = r.j;
  });
  ASSERT_TRUE(eventually([&] { return s->srv->engine_stats().active == 2; }));
  auto t0 = std::chrono::steady_clock::now();
  const int port = s->port;
  s->srv->stop();
  s->th.join();  // run() returned: listener closed, engine thread joined
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  plain.join();
  EXPECT_EQ(status, 503);
  EXPECT_EQ(body["error"]["code"], "shutting_down");
  stream.read_to_eof();
  EXPECT_NE(stream.data.find("shutting_down"), std::string::npos) << stream.data.substr(stream.data.size() - 300);
  EXPECT_NE(stream.data.find("data: [DONE]"), std::string::npos);
  EXPECT_EQ(s->srv->cancelled("shutdown"), 2u);
  EXPECT_EQ(s->srv->engine_stats().active, 0);
  s->th = std::thread([] {});  // already joined; let ~Running join something
  s.reset();
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(1);
  EXPECT_FALSE(c.Get("/health"));  // nobody listens any more
}

// `skymoe serve` as a process: it answers, gives the engine's text, and exits on SIGTERM.
static void check_binary_serves(const std::vector<std::string>& extra) {
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_addclose(&fa, out[0]);
  std::vector<std::string> args = {SKYMOE_BIN, "serve", "--model", fx().dir, "--port", "0", "--threads", "2"};
  args.insert(args.end(), extra.begin(), extra.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid;
  ASSERT_EQ(posix_spawn(&pid, SKYMOE_BIN, &fa, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  close(out[1]);
  // "listening on http://127.0.0.1:PORT"
  std::string line;
  auto end = std::chrono::steady_clock::now() + 20s;
  while (line.find('\n') == std::string::npos && std::chrono::steady_clock::now() < end) {
    pollfd p{out[0], POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    char buf[256];
    ssize_t n = read(out[0], buf, sizeof buf);
    if (n <= 0) break;
    line.append(buf, size_t(n));
  }
  close(out[0]);
  const std::string prefix = "listening on http://127.0.0.1:";
  ASSERT_EQ(line.rfind(prefix, 0), 0u) << line;
  const int port = std::stoi(line.substr(prefix.size()));
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(10);
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto m = c.Get("/v1/models");
  ASSERT_TRUE(m);
  EXPECT_EQ(json::parse(m->body)["data"][0]["id"], std::filesystem::path(fx().dir).filename().string());
  auto r = c.Post("/v1/completions", completion("hello world", 6).dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);  // the model name is the directory's, not "tiny-test"
  json req = completion("hello world", 6);
  req.erase("model");
  r = c.Post("/v1/completions", req.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body)["choices"][0]["text"], direct(with_bos("hello world"), 6).text);

  kill(pid, SIGTERM);
  int st = 0;
  pid_t got = 0;
  for (int i = 0; i < 1000 && got == 0; i++) {
    got = waitpid(pid, &st, WNOHANG);
    if (got == 0) std::this_thread::sleep_for(10ms);
  }
  if (got == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    FAIL() << "serve did not exit within 10 s of SIGTERM";
  }
  EXPECT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 0);
}

TEST(Server, BinaryServesAndExitsOnSigterm) { check_binary_serves({}); }

// The reference backend serves too (the seam is complete), with the cpu engine's greedy text.
TEST(Server, BinaryServesOnTheRefBackend) { check_binary_serves({"--device", "ref"}); }

// ---- prompt length, before tokenizing ---------------------------------------------------------------

// A text prompt that is too long for sure is refused before the tokenizer sees it (SentencePiece
// costs 100-200 bytes per byte of text while encoding, memory the allocator then keeps); one that is
// too long only once encoded is still refused, with its exact count.
TEST(ServerApi, TooLongTextIsRefusedBeforeTokenizing) {
  ApiLimits lim;
  lim.model_name = "m";
  lim.tok = &fx().tok;
  lim.vocab_size = fx().im.cfg.vocab_size;
  lim.context = 512;
  lim.max_prompt_tokens = 100;
  lim.max_tokens_limit = 100;
  size_t encoded = 0;
  lim.on_encode = [&](size_t n) { encoded += n; };
  std::string huge;
  while (huge.size() < (1 << 20)) huge += "the quick brown fox jumps over the lazy dog. ";
  auto refused = [&](const json& body, bool chat, const char* param) {
    try {
      chat ? parse_chat_request(body, lim) : parse_completion_request(body, lim);
      ADD_FAILURE() << "accepted";
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, 400);
      EXPECT_EQ(e.param, param);
      EXPECT_EQ(e.code, "context_length_exceeded");
      return std::string(e.what());
    }
    return std::string();
  };
  refused({{"prompt", huge}}, false, "prompt");
  refused({{"prompt", json::array({huge})}}, false, "prompt");
  refused({{"messages", {{{"role", "user"}, {"content", huge}}}}}, true, "messages");
  EXPECT_EQ(encoded, 0u);
  // Over the limit only once encoded (a few bytes per token): encoded, then refused.
  const std::string over = huge.substr(0, 2 * size_t(lim.max_prompt_tokens));
  ASSERT_LE(fx().tok.min_tokens(over) + 1, lim.max_prompt_tokens);
  ASSERT_GT(with_bos(over).size(), size_t(lim.max_prompt_tokens));
  const std::string msg = refused({{"prompt", over}}, false, "prompt");
  EXPECT_NE(msg.find(std::to_string(with_bos(over).size()) + " tokens"), std::string::npos) << msg;
  EXPECT_EQ(encoded, over.size());
  EXPECT_EQ(parse_completion_request({{"prompt", "hello world"}}, lim).prompt, with_bos("hello world"));
}

// ---- log-probabilities and echo -------------------------------------------------------------------

// Completions' logprobs: log_softmax of the model's logits (checked against the training forward),
// the prompt's with echo, top alternatives that hold the greedy choice, OpenAI's legacy layout.
TEST(Server, CompletionLogprobsMatchTheModel) {
  Running s;
  const std::string prompt = "the quick brown fox";
  const auto ids = with_bos(prompt);
  const size_t P = ids.size();
  const Direct d = direct(ids, 10);
  const auto gen = listed_ids(d);
  std::vector<int32_t> all = ids;
  all.insert(all.end(), gen.begin(), gen.end());
  const auto ref = reference_logprobs(std::vector<int32_t>(all.begin(), all.end() - 1));

  json req = completion(prompt, 10);
  req["logprobs"] = 3;
  req["echo"] = true;
  auto r = s.post("/v1/completions", req);
  ASSERT_EQ(r.status, 200) << r.body;
  const json& c = r.j["choices"][0];
  EXPECT_EQ(c["text"], prompt + d.text);
  const json& lp = c["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), all.size());
  ASSERT_EQ(lp["token_logprobs"].size(), all.size());
  ASSERT_EQ(lp["top_logprobs"].size(), all.size());
  ASSERT_EQ(lp["text_offset"].size(), all.size());
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());  // nothing predicts the first token
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  std::string prompt_tokens;
  for (size_t i = 0; i < P; i++) prompt_tokens += lp["tokens"][i].get<std::string>();
  EXPECT_EQ(prompt_tokens, " " + prompt);  // bos shows nothing; the dummy prefix is the first piece's
  EXPECT_EQ(lp["text_offset"][0], 0);
  EXPECT_EQ(lp["text_offset"][P], utf8_chars(prompt));
  for (size_t i = 1; i < all.size(); i++) {
    SCOPED_TRACE(i);
    const double got = lp["token_logprobs"][i];
    EXPECT_NEAR(got, ref[i - 1][all[i]], 1e-4);
    EXPECT_LE(lp["text_offset"][i - 1].get<int64_t>(), lp["text_offset"][i].get<int64_t>());
    const json& top = lp["top_logprobs"][i];
    ASSERT_TRUE(top.is_object());
    EXPECT_LE(top.size(), 4u);  // 3 alternatives and the chosen token
    ASSERT_TRUE(top.contains(lp["tokens"][i].get<std::string>())) << top;
    double best = -1e300;
    for (const auto& [k, v] : top.items()) best = std::max(best, v.get<double>());
    EXPECT_NEAR(best, *std::max_element(ref[i - 1].begin(), ref[i - 1].end()), 1e-4);
    if (i >= P) {
      EXPECT_EQ(best, got);  // greedy: the chosen token is the likeliest
    }
  }
  // Without echo: the generated tokens alone, the same numbers, offsets into the completion.
  req["echo"] = false;
  auto plain = s.post("/v1/completions", req);
  ASSERT_EQ(plain.status, 200);
  EXPECT_EQ(plain.j["choices"][0]["text"], d.text);
  const json& pl = plain.j["choices"][0]["logprobs"];
  ASSERT_EQ(pl["tokens"].size(), gen.size());
  for (size_t i = 0; i < gen.size(); i++) {
    EXPECT_EQ(pl["tokens"][i], lp["tokens"][P + i]);
    EXPECT_EQ(pl["token_logprobs"][i], lp["token_logprobs"][P + i]);
    EXPECT_EQ(pl["text_offset"][i].get<int64_t>(), lp["text_offset"][P + i].get<int64_t>() - utf8_chars(prompt));
  }
  // logprobs 0: the chosen token alone in each top list. No logprobs: null, as before.
  req["logprobs"] = 0;
  const json zero = s.post("/v1/completions", req).j;  // kept alive: the loop below iterates into it
  for (const auto& t : zero["choices"][0]["logprobs"]["top_logprobs"]) EXPECT_EQ(t.size(), 1u);
  req.erase("logprobs");
  EXPECT_TRUE(s.post("/v1/completions", req).j["choices"][0]["logprobs"].is_null());
}

// lm-evaluation-harness's local-completions loglikelihood request, as it sends it
// (lm_eval/models/openai_completions.py): token ids in a batch of one, echo, logprobs 1,
// max_tokens 1; it sums token_logprobs[ctxlen:-1] and calls the continuation greedy when each of
// its tokens tops its top_logprobs.
TEST(Server, LmEvalLoglikelihoodRequest) {
  Running s;
  const auto ctx = with_bos("the quick brown"), whole = with_bos("the quick brown fox jumps");
  ASSERT_TRUE(std::equal(ctx.begin(), ctx.end(), whole.begin()));
  const size_t ctxlen = ctx.size();
  json req = {{"model", "tiny-test"}, {"prompt", json::array({whole})}, {"temperature", 0}, {"max_tokens", 1},
              {"logprobs", 1}, {"seed", 1234}, {"echo", true}};
  auto r = s.post("/v1/completions", req);
  ASSERT_EQ(r.status, 200) << r.body;
  const json& lp = r.j["choices"][0]["logprobs"];
  ASSERT_EQ(lp["token_logprobs"].size(), whole.size() + 1);
  const auto ref = reference_logprobs(whole);
  double sum = 0, want = 0;
  bool greedy = true, want_greedy = true;
  for (size_t i = ctxlen; i < whole.size(); i++) {
    sum += lp["token_logprobs"][i].get<double>();
    want += ref[i - 1][whole[i]];
    double best = -1e300;
    for (const auto& [k, v] : lp["top_logprobs"][i].items()) best = std::max(best, v.get<double>());
    greedy = greedy && lp["token_logprobs"][i].get<double>() == best;
    want_greedy = want_greedy && ref[i - 1][whole[i]] == *std::max_element(ref[i - 1].begin(), ref[i - 1].end());
  }
  EXPECT_NEAR(sum, want, 1e-4);
  EXPECT_EQ(greedy, want_greedy);
  // max_tokens 0 with echo: the prompt alone, as OpenAI allows.
  req["max_tokens"] = 0;
  auto z = s.post("/v1/completions", req);
  ASSERT_EQ(z.status, 200) << z.body;
  const json& zc = z.j["choices"][0];
  EXPECT_EQ(zc["text"], "the quick brown fox jumps");
  EXPECT_EQ(zc["finish_reason"], "length");
  EXPECT_EQ(z.j["usage"]["completion_tokens"], 0);
  ASSERT_EQ(zc["logprobs"]["token_logprobs"].size(), whole.size());
  for (size_t i = 1; i < whole.size(); i++) EXPECT_EQ(zc["logprobs"]["token_logprobs"][i], lp["token_logprobs"][i]);
  req["stream"] = true;
  Sse sse = parse_sse(s.post("/v1/completions", req).body);
  EXPECT_EQ(stream_text(sse, false), "the quick brown fox jumps");
  EXPECT_EQ(stream_logprobs(sse, false), zc["logprobs"]);
  // Without echo, 0 tokens is still an error.
  req.erase("echo");
  req["stream"] = false;
  EXPECT_EQ(s.post("/v1/completions", req).j["error"]["param"], "max_tokens");
}

// A stream carries each token's log-probabilities in the chunk that carries its text; together
// they are the non-streaming response's. A stop string drops the tokens it cut off.
TEST(Server, StreamedLogprobsAndStopStrings) {
  Running s;
  json req = completion("lazy dog jumps", 40);
  req["logprobs"] = 2;
  req["echo"] = true;
  auto plain = s.post("/v1/completions", req);
  ASSERT_EQ(plain.status, 200);
  req["stream"] = true;
  Sse sse = parse_sse(s.post("/v1/completions", req).body);
  EXPECT_EQ(stream_text(sse, false), plain.j["choices"][0]["text"]);
  EXPECT_EQ(stream_logprobs(sse, false), plain.j["choices"][0]["logprobs"]);

  const std::string text = plain.j["choices"][0]["text"].get<std::string>().substr(std::string("lazy dog jumps").size());
  std::string stop;
  for (size_t i = text.size() / 3; i + 2 < text.size() && stop.empty(); i++)
    if (std::isalpha(uint8_t(text[i])) && std::isalpha(uint8_t(text[i + 1]))) stop = text.substr(i, 2);
  ASSERT_FALSE(stop.empty()) << text;
  req["echo"] = false;
  req["stream"] = false;
  const json full = s.post("/v1/completions", req).j["choices"][0]["logprobs"];
  req["stop"] = stop;
  for (bool stream : {false, true}) {
    req["stream"] = stream;
    auto r = s.post("/v1/completions", req);
    Sse st = stream ? parse_sse(r.body) : Sse{};
    const std::string got = stream ? stream_text(st, false) : r.j["choices"][0]["text"].get<std::string>();
    const json lp = stream ? stream_logprobs(st, false) : r.j["choices"][0]["logprobs"];
    EXPECT_EQ(got, text.substr(0, text.find(stop)));
    // Exactly the tokens that start inside the text are listed: the uncut run's, up to the first
    // one that starts at or after the cut.
    const size_t n = lp["tokens"].size();
    ASSERT_GT(n, 0u);
    ASSERT_LT(n, full["tokens"].size());
    for (size_t i = 0; i < n; i++) {
      EXPECT_EQ(lp["tokens"][i], full["tokens"][i]);
      EXPECT_EQ(lp["text_offset"][i], full["text_offset"][i]);
      EXPECT_EQ(lp["token_logprobs"][i], full["token_logprobs"][i]);
    }
    EXPECT_LT(full["text_offset"][n - 1].get<int64_t>(), utf8_chars(got));
    EXPECT_GE(full["text_offset"][n].get<int64_t>(), utf8_chars(got));
  }
}

// A model's chat template renders /v1/chat/completions prompts, and its end-of-turn token ends
// the reply by id: here "<|end|>" is an added token whose id also decodes to ordinary text, so
// only the id (not the text) can stop it.
TEST(Server, ChatTemplateRendersAndStopsAtItsEndOfTurnToken) {
  const std::string src =
      "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
      "{% if add_generation_prompt %}<|assistant|>{% endif %}";
  const json msgs = json::array({{{"role", "user"}, {"content", "hello world"}}});
  // Pick the end token among what the model generates after the prompt that contains it.
  int32_t end_id = 100;
  std::shared_ptr<ChatTemplate> tpl;
  std::vector<int32_t> prompt;
  Direct d;
  for (int round = 0; round < 8; round++) {
    ChatTokens tk;
    tk.eos = "</s>";
    tk.added = {{"<|end|>", end_id}};
    tpl = std::make_shared<ChatTemplate>(src, "test.jinja", tk);
    prompt = tpl->encode(fx().tok, tpl->render(msgs, true));
    d = direct(prompt, 12);
    ASSERT_GE(d.ids.size(), 4u);
    if (std::find(d.ids.begin() + 1, d.ids.end(), end_id) != d.ids.end()) break;
    end_id = d.ids[3];
  }
  const auto at = std::find(d.ids.begin() + 1, d.ids.end(), end_id);
  ASSERT_NE(at, d.ids.end()) << "no fixed point for the end token";
  ASSERT_EQ(tpl->stop_strings().front(), "<|end|>");
  ASSERT_EQ(tpl->stop_token_ids(fx().tok), (std::vector<int32_t>{end_id, fx().tok.eos_id()}));
  EXPECT_EQ(std::count(prompt.begin(), prompt.end(), end_id), 1);  // the special became its id
  StreamDecoder dec(fx().tok, false);
  std::string want;
  for (auto it = d.ids.begin(); it != at; ++it) want += dec.push(*it);
  want = valid_utf8(want + dec.flush());
  if (want.rfind(' ', 0) == 0) want = want.substr(1);

  ServerOptions o;
  o.chat_template = tpl;
  Running s(o);
  json req = {{"model", "tiny-test"}, {"messages", msgs}, {"max_tokens", 12}, {"temperature", 0}};
  auto r = s.post("/v1/chat/completions", req);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.j["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(r.j["choices"][0]["message"]["content"], want);
  EXPECT_EQ(r.j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(r.j["usage"]["completion_tokens"], int(at - d.ids.begin()) + 1);
  req["stream"] = true;
  Sse sse = parse_sse(s.post("/v1/chat/completions", req).body);
  EXPECT_EQ(stream_text(sse, true), want);
  EXPECT_EQ(sse.chunks.back()["choices"][0]["finish_reason"], "stop");
  // A template that refuses the conversation: 400 with its message.
  ServerOptions o2;
  o2.chat_template = std::make_shared<ChatTemplate>("{{ raise_exception('no chat here') }}", "strict.jinja");
  Running s2(o2);
  auto bad = s2.post("/v1/chat/completions", json{{"messages", msgs}});
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(bad.j["error"]["message"].get<std::string>().find("no chat here"), std::string::npos) << bad.body;
}

// Chat: logprobs true and top_logprobs k, in chat's layout, the same in a stream.
TEST(Server, ChatLogprobs) {
  Running s;
  json req = {{"model", "tiny-test"}, {"messages", {{{"role", "user"}, {"content", "hello world"}}}}, {"max_tokens", 12},
              {"temperature", 0}, {"logprobs", true}, {"top_logprobs", 2}};
  auto r = s.post("/v1/chat/completions", req);
  ASSERT_EQ(r.status, 200) << r.body;
  const std::string content = r.j["choices"][0]["message"]["content"];
  const json& lp = r.j["choices"][0]["logprobs"]["content"];
  const auto prompt = with_bos("User: hello world\nAssistant:");
  const Direct d = direct(prompt, 12);
  const auto gen = listed_ids(d);
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), gen.begin(), gen.end());
  const auto ref = reference_logprobs(std::vector<int32_t>(all.begin(), all.end() - 1));
  ASSERT_FALSE(lp.empty());
  ASSERT_LE(lp.size(), gen.size());
  std::string bytes;
  for (size_t i = 0; i < lp.size(); i++) {
    SCOPED_TRACE(i);
    const json& e = lp[i];
    EXPECT_NEAR(e["logprob"].get<double>(), ref[prompt.size() - 1 + i][gen[i]], 1e-4);
    for (int b : e["bytes"]) bytes += char(b);
    ASSERT_EQ(e["top_logprobs"].size(), 2u);
    EXPECT_EQ(e["top_logprobs"][0]["token"], e["token"]);  // greedy
    EXPECT_EQ(e["top_logprobs"][0]["logprob"], e["logprob"]);
    EXPECT_GE(e["top_logprobs"][0]["logprob"].get<double>(), e["top_logprobs"][1]["logprob"].get<double>());
    EXPECT_TRUE(e["top_logprobs"][1]["bytes"].is_array());
  }
  // The tokens' bytes spell the reply (whose leading space chat drops), up to a cut stop string.
  if (!bytes.empty() && bytes[0] == ' ') bytes.erase(0, 1);
  EXPECT_EQ(valid_utf8(bytes).rfind(content, 0), 0u) << bytes;
  req["stream"] = true;
  Sse sse = parse_sse(s.post("/v1/chat/completions", req).body);
  EXPECT_EQ(stream_text(sse, true), content);
  EXPECT_EQ(stream_logprobs(sse, true), r.j["choices"][0]["logprobs"]);
  req.erase("logprobs");
  req.erase("top_logprobs");
  req["stream"] = false;
  EXPECT_TRUE(s.post("/v1/chat/completions", req).j["choices"][0]["logprobs"].is_null());
}

// Without a tokenizer, tokens read "token_id:N" (there is no text to show).
TEST(Server, LogprobsWithoutTokenizer) {
  Running s({}, false);
  const auto prompt = with_bos("hello world");
  auto r = s.post("/v1/completions", json{{"prompt", prompt}, {"max_tokens", 3}, {"temperature", 0}, {"logprobs", 1},
                                          {"echo", true}});
  ASSERT_EQ(r.status, 200) << r.body;
  const json& lp = r.j["choices"][0]["logprobs"];
  const Direct d = direct(prompt, 3);
  const auto gen = listed_ids(d);
  ASSERT_EQ(lp["tokens"].size(), prompt.size() + gen.size());
  for (size_t i = 0; i < prompt.size(); i++) EXPECT_EQ(lp["tokens"][i], "token_id:" + std::to_string(prompt[i]));
  for (size_t i = 0; i < gen.size(); i++) EXPECT_EQ(lp["tokens"][prompt.size() + i], "token_id:" + std::to_string(gen[i]));
}
