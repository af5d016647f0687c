#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sentencepiece_trainer.h>

#include <set>

#include "core/error.h"
#include "core/rng.h"
#include "io/token_data.h"
#include "io/tokenizer.h"
#include "ref.h"

using namespace sky;
namespace fs = std::filesystem;

namespace {

void write_text(const std::string& path, const std::string& text) {
  std::ofstream o(path, std::ios::binary);
  o << text;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Expects `f` to throw sky::Error whose message contains every one of `parts`.
template <class F>
void expect_error(F f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

// A few KB of varied English and Chinese, with empty lines, CRLF and one very long line.
std::string make_corpus() {
  const std::vector<std::string> words = {
      "the", "model", "expert", "router", "token", "layer", "gating", "sparse", "mixture", "training",
      "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "upcycling", "loss", "batch", "of", "and",
      "to", "in", "is", "with", "Skywork", "MoE", "attention", "weights", "2024", "42", "data", "file"};
  const std::vector<std::string> zh = {"混合专家模型", "路由器", "训练数据", "我们", "语言", "大模型",
                                       "的", "是", "在", "中文", "测试", "天气很好"};
  Rng rng(7);
  std::string s;
  for (int line = 0; line < 120; line++) {
    int n = 4 + int(rng.below(10));
    for (int i = 0; i < n; i++) {
      if (i) s += ' ';
      s += words[rng.below(words.size())];
    }
    s += rng.below(2) ? ".\n" : ", and more!\r\n";
    if (line % 3 == 0) {
      for (int i = 0; i < 5; i++) s += zh[rng.below(zh.size())];
      s += "。\n";
    }
    if (line % 17 == 0) s += "\n\n%\n";
  }
  std::string long_line;
  while (long_line.size() < 10000) long_line += words[rng.below(words.size())] + " ";
  s += long_line + "\n";
  return s;
}

struct Trained {
  std::string dir, corpus, model;
  Tokenizer tok;
};

// Trained once and shared: training is the slow part of these tests.
const Trained& trained() {
  static Trained t = [] {
    Trained r;
    r.dir = skytest::temp_dir("data-tok");
    r.corpus = r.dir + "/corpus.txt";
    write_text(r.corpus, make_corpus());
    r.tok = Tokenizer::train({r.corpus}, r.dir + "/tok", 400);
    r.model = r.dir + "/tok.model";
    return r;
  }();
  return t;
}

std::vector<uint32_t> iota_tokens(uint32_t n) {
  std::vector<uint32_t> v(n);
  for (uint32_t i = 0; i < n; i++) v[i] = i;
  return v;
}

TokenFile iota_file(const std::string& tag, uint32_t n) {
  std::string p = skytest::temp_dir(tag) + "/tokens.bin";
  write_token_file(p, iota_tokens(n));
  return TokenFile::open(p, n);
}

}  // namespace

TEST(Tokenizer, TrainConventionsAndRoundTrip) {
  const auto& t = trained();
  EXPECT_EQ(t.tok.path(), t.model);
  EXPECT_TRUE(fs::exists(t.model));
  EXPECT_EQ(t.tok.vocab_size(), 400);
  EXPECT_EQ(t.tok.unk_id(), 0);
  EXPECT_EQ(t.tok.bos_id(), 1);
  EXPECT_EQ(t.tok.eos_id(), 2);
  EXPECT_EQ(t.tok.pad_id(), -1);
  EXPECT_EQ(t.tok.id_to_piece(1), "<s>");
  EXPECT_EQ(t.tok.id_to_piece(2), "</s>");
  EXPECT_TRUE(t.tok.adds_dummy_prefix());

  const std::vector<std::string> texts = {
      "the quick brown fox jumps over the lazy dog",
      "混合专家模型的路由器",
      "emoji 🙂🚀 and rare CJK 龘 plus é, ß, Ω",
      "  two leading spaces,\ttabs\tand\nnewlines\n\nend  ",
      "Numbers 1234567 and symbols ~!@#$%^&*()",
      ""};
  for (const auto& s : texts) {
    auto ids = t.tok.encode(s);
    for (int32_t id : ids) EXPECT_NE(id, t.tok.unk_id()) << s;
    EXPECT_EQ(t.tok.decode(ids), s);
  }
  // Frequent English words become single multi-letter pieces, not bytes.
  EXPECT_LT(t.tok.encode("the model").size(), 5u);
}

TEST(Tokenizer, LoadMatchesTrained) {
  const auto& t = trained();
  Tokenizer loaded = Tokenizer::load(t.model);
  EXPECT_EQ(loaded.vocab_size(), t.tok.vocab_size());
  for (const char* s : {"mixture of experts 混合专家", "🙂 weights"}) {
    EXPECT_EQ(loaded.encode(s), t.tok.encode(s));
  }
  for (int id = 0; id < loaded.vocab_size(); id++) EXPECT_EQ(loaded.id_to_piece(id), t.tok.id_to_piece(id));
}

TEST(Tokenizer, TrainingIsDeterministic) {
  const auto& t = trained();
  std::string dir = skytest::temp_dir("data-tok-det");
  Tokenizer a = Tokenizer::train({t.corpus}, dir + "/again.model", 400);
  EXPECT_EQ(a.path(), dir + "/again.model");
  EXPECT_EQ(read_bytes(dir + "/again.model"), read_bytes(t.model));
}

TEST(Tokenizer, UnigramTrains) {
  const auto& t = trained();
  TokenizerTrainOptions opt;
  opt.model_type = "unigram";
  Tokenizer u = Tokenizer::train({t.corpus}, skytest::temp_dir("data-uni") + "/u", 400, opt);
  std::string s = "the router 路由器 🙂";
  EXPECT_EQ(u.decode(u.encode(s)), s);
}

// min_tokens (a server's early refusal of a too-long prompt) never claims more tokens than
// encode() gives: on text of every kind, for both model types, and where the bound is tight.
TEST(Tokenizer, MinTokensIsALowerBound) {
  const auto& t = trained();
  TokenizerTrainOptions uni;
  uni.model_type = "unigram";
  const std::string dir = skytest::temp_dir("data-minuni");
  Tokenizer u = Tokenizer::train({t.corpus}, dir + "/u", 400, uni);
  Rng rng(3);
  std::string noise;  // arbitrary bytes: malformed UTF-8 becomes U+FFFD, unknown characters bytes
  for (int i = 0; i < 3000; i++) noise += char(rng.below(256));
  std::string longest_piece;
  for (int id = 0; id < t.tok.vocab_size(); id++)
    if (t.tok.decode_piece(id).size() > longest_piece.size()) longest_piece = t.tok.decode_piece(id);
  std::string repeated;  // the longest piece over and over: close to one token per max_piece_bytes
  for (int i = 0; i < 200; i++) repeated += longest_piece;
  const std::vector<std::string> texts = {read_bytes(t.corpus), noise, std::string(5000, ' '), "a" + std::string(999, ' ') + "b",
                                          "混合专家模型的路由器 🙂🚀 龘", repeated, "x", ""};
  for (const Tokenizer* tok : std::vector<const Tokenizer*>{&t.tok, &u}) {
    EXPECT_GE(tok->max_piece_bytes(), 4);
    for (const auto& s : texts) {
      SCOPED_TRACE(s.substr(0, 40));
      EXPECT_LE(tok->min_tokens(s), int64_t(tok->encode(s).size()));
    }
    EXPECT_GT(tok->min_tokens(read_bytes(t.corpus)), 0);
  }
  EXPECT_EQ(t.tok.max_piece_bytes(), int(std::max<size_t>(4, longest_piece.size())));
  // Tight for text made of the longest piece (a useful bound, not just a safe one).
  EXPECT_GE(2 * t.tok.min_tokens(repeated), int64_t(t.tok.encode(repeated).size()));
  fs::remove_all(dir);
}

// Models whose normalization merges input: NFKC (a precompiled character map) gets no bound at all;
// identity with remove_extra_whitespaces does not count spaces, which fold into one.
TEST(Tokenizer, MinTokensFollowsTheNormalizer) {
  const auto& t = trained();
  const std::string dir = skytest::temp_dir("data-minnorm");
  auto train = [&](const std::string& name, const std::string& extra) {
    const std::string args = "--input=" + t.corpus + " --model_prefix=" + dir + "/" + name +
                             " --vocab_size=400 --character_coverage=0.99 --hard_vocab_limit=false --minloglevel=2 --num_threads=1 " + extra;
    auto st = sentencepiece::SentencePieceTrainer::Train(args);
    EXPECT_TRUE(st.ok()) << st.ToString();
    return Tokenizer::load(dir + "/" + name + ".model");
  };
  Tokenizer nfkc = train("nfkc", "--normalization_rule_name=nmt_nfkc --byte_fallback=true");
  EXPECT_EQ(nfkc.max_piece_bytes(), 0);
  EXPECT_EQ(nfkc.min_tokens(std::string(100000, 'a')), 0);
  // NFKC is why: this control character is deleted, so a million of them are no tokens at all.
  EXPECT_TRUE(nfkc.encode(std::string(1000, '\x01')).empty());
  Tokenizer no_bytes = train("nobytes", "--normalization_rule_name=identity --byte_fallback=false");
  EXPECT_EQ(no_bytes.max_piece_bytes(), 0);  // unknown characters merge into one unk
  Tokenizer folding = train("fold", "--normalization_rule_name=identity --byte_fallback=true --remove_extra_whitespaces=true");
  ASSERT_GT(folding.max_piece_bytes(), 0);
  const std::string spaced = "a" + std::string(100000, ' ') + "b";
  EXPECT_LE(folding.min_tokens(spaced), int64_t(folding.encode(spaced).size()));
  EXPECT_EQ(folding.min_tokens(spaced), 1);  // "a" and "b", ceil(2 / max_piece_bytes)
  fs::remove_all(dir);
}

TEST(Tokenizer, StreamDecoderMatchesDecode) {
  const auto& t = trained();
  for (std::string s : {"emoji 🙂🚀 and 龘 and 混合专家", " leading space", "plain words"}) {
    auto ids = t.tok.encode(s);
    ids.insert(ids.begin(), t.tok.bos_id());
    StreamDecoder sd(t.tok);
    std::string out;
    for (int32_t id : ids) {
      std::string piece = sd.push(id);
      // Only whole characters come out: never a dangling lead byte at the end.
      if (!piece.empty()) {
        EXPECT_LT(static_cast<unsigned char>(piece.back()), 0xC0u);
      }
      out += piece;
    }
    out += sd.flush();
    EXPECT_EQ(out, s);
  }
  // decode_piece: space symbol as a space, byte pieces as their byte.
  auto ids = t.tok.encode("a 🙂");
  std::string raw;
  for (int32_t id : ids) raw += t.tok.decode_piece(id);
  EXPECT_EQ(raw, " a 🙂");
}

TEST(Tokenizer, Errors) {
  std::string dir = skytest::temp_dir("data-tok-err");
  expect_error([&] { Tokenizer::load(dir + "/missing.model"); }, {dir + "/missing.model"});
  write_text(dir + "/junk.model", "this is not a protobuf at all \xff\xfe");
  expect_error([&] { Tokenizer::load(dir + "/junk.model"); }, {dir + "/junk.model"});
  // A piece that starts with a NUL byte (found by fuzz_tokenizer): SentencePiece's trie builder
  // threw its own exception, which named no file and was not a sky::Error.
  auto piece = [](const std::string& text, char type) {  // one ModelProto.pieces entry, encoded
    const std::string p = std::string{'\x0a', char(text.size())} + text + std::string{'\x18', type};
    return std::string{'\x0a', char(p.size())} + p;
  };
  write_text(dir + "/nul.model", piece("<unk>", 2) + piece(std::string("\0a", 2), 1));  // 2 UNKNOWN, 1 NORMAL
  expect_error([&] { Tokenizer::load(dir + "/nul.model"); }, {dir + "/nul.model", "zero-length key"});
  expect_error([&] { Tokenizer::train({dir + "/nope.txt"}, dir + "/t", 400); }, {dir + "/nope.txt"});
  TokenizerTrainOptions opt;
  opt.model_type = "wordpiece";
  expect_error([&] { Tokenizer::train({trained().corpus}, dir + "/t", 400, opt); }, {"wordpiece"});
  expect_error([&] { trained().tok.decode({5, 100000}); }, {"100000"});
  expect_error([] { parse_doc_separator("paragraph"); }, {"paragraph"});
}

TEST(Tokenizer, TokenizeFilesSeparators) {
  const auto& t = trained();
  std::string dir = skytest::temp_dir("data-tokenize");
  const std::vector<std::string> fortunes = {"The router picks two experts.\n\t-- anon", "混合专家模型",
                                             "Line one\n\nline three after a blank"};
  std::string text;
  for (const auto& f : fortunes) text += f + "\n%\n";
  write_text(dir + "/fortunes", text);

  uint64_t last_done = 0, last_total = 0;
  int calls = 0;
  auto progress = [&](uint64_t done, uint64_t total) {
    EXPECT_LE(done, total);
    EXPECT_GE(done, last_done);
    last_done = done, last_total = total, calls++;
  };
  TokenizeOptions opt;  // percent separator, eos after each document
  auto stats = tokenize_files(t.tok, {dir + "/fortunes"}, dir + "/out.bin", opt, progress);
  EXPECT_EQ(stats.documents, 3u);
  EXPECT_EQ(last_total, text.size());
  EXPECT_EQ(last_done, last_total);
  EXPECT_GE(calls, 2);
  EXPECT_FALSE(fs::exists(dir + "/out.bin.tmp"));

  TokenFile tf = TokenFile::open(dir + "/out.bin", t.tok.vocab_size());
  EXPECT_EQ(tf.size(), stats.tokens);
  std::vector<std::string> docs;
  std::vector<int32_t> cur;
  for (uint64_t i = 0; i < tf.size(); i++) {
    if (int32_t(tf[i]) == t.tok.eos_id()) {
      docs.push_back(t.tok.decode(cur));
      cur.clear();
    } else {
      cur.push_back(int32_t(tf[i]));
    }
  }
  EXPECT_TRUE(cur.empty());
  EXPECT_EQ(docs, fortunes);

  auto count = [&](const std::string& content, DocSeparator sep, bool bos, bool eos) {
    write_text(dir + "/in.txt", content);
    TokenizeOptions o;
    o.separator = sep, o.bos = bos, o.eos = eos;
    auto st = tokenize_files(t.tok, {dir + "/in.txt"}, dir + "/o.bin", o);
    TokenFile f = TokenFile::open(dir + "/o.bin", t.tok.vocab_size());
    uint64_t n_bos = 0, n_eos = 0;
    for (uint64_t i = 0; i < f.size(); i++) n_bos += f[i] == 1, n_eos += f[i] == 2;
    EXPECT_EQ(n_bos, bos ? st.documents : 0);
    EXPECT_EQ(n_eos, eos ? st.documents : 0);
    if (bos) {
      EXPECT_EQ(f[0], 1u);
    }
    return st.documents;
  };
  const std::string para = "a b\nc d\n\n\ne f\r\n  \ng\n";
  EXPECT_EQ(count(para, DocSeparator::Line, false, true), 4u);
  EXPECT_EQ(count(para, DocSeparator::Blank, true, false), 3u);
  EXPECT_EQ(count(para, DocSeparator::File, true, true), 1u);
  EXPECT_EQ(count(para, DocSeparator::Percent, false, true), 1u);
  EXPECT_EQ(parse_doc_separator("blank"), DocSeparator::Blank);
}

TEST(TokenFile, WriteOpenRoundTrip) {
  std::string p = skytest::temp_dir("data-tf") + "/t.bin";
  std::vector<uint32_t> v = {0, 7, 3, 99, 1};
  write_token_file(p, v);
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  EXPECT_EQ(fs::file_size(p), 20u);
  TokenFile f = TokenFile::open(p, 100);
  ASSERT_EQ(f.size(), 5u);
  EXPECT_EQ(std::vector<uint32_t>(f.data(), f.data() + 5), v);
  EXPECT_EQ(f.all(), (TokenRange{0, 5}));
  // Little-endian on disk.
  std::string bytes = read_bytes(p);
  EXPECT_EQ(uint8_t(bytes[12]), 99);
  EXPECT_EQ(uint8_t(bytes[13]), 0);
}

TEST(TokenFile, Errors) {
  std::string dir = skytest::temp_dir("data-tf-err");
  expect_error([&] { TokenFile::open(dir + "/missing.bin", 10); }, {dir + "/missing.bin"});
  write_text(dir + "/ten.bin", std::string(10, '\0'));
  expect_error([&] { TokenFile::open(dir + "/ten.bin", 10); }, {dir + "/ten.bin", "has 10 bytes, not a multiple of 4"});
  write_text(dir + "/empty.bin", "");
  expect_error([&] { TokenFile::open(dir + "/empty.bin", 10); }, {dir + "/empty.bin", "empty"});
  std::vector<uint32_t> v(200000, 3);
  v[123456] = 5000;
  v[150000] = 6000;
  write_token_file(dir + "/big.bin", v);
  expect_error([&] { TokenFile::open(dir + "/big.bin", 5000); }, {dir + "/big.bin", "5000", "index 123456"});
  EXPECT_NO_THROW(TokenFile::open(dir + "/big.bin", 6001));
}

TEST(Batcher, SequentialFollowsTheRule) {
  const int B = 3, S = 5;
  const uint32_t n = B * S * 4 + 7;  // 4 full batches and a tail that is never used
  TokenFile f = iota_file("data-seq", n);
  EXPECT_EQ(sequential_batch_count(n, B, S), 4u);
  EXPECT_EQ(sequential_batch_count(B * S * 4 + 1, B, S), 4u);
  EXPECT_EQ(sequential_batch_count(B * S * 4, B, S), 3u);

  for (TokenRange r : {f.all(), TokenRange{11, n}}) {
    Batcher bt(f, r, B, S, DataOrder::Sequential);
    uint64_t nb = sequential_batch_count(r.size(), B, S);
    EXPECT_EQ(bt.batches_per_epoch(), nb);
    std::vector<int32_t> in(B * S), tg(B * S);
    for (uint64_t step = 0; step < 2 * nb + 1; step++) {
      uint64_t k = step % nb;
      EXPECT_EQ(bt.epoch(), step / nb);
      bt.next(in.data(), tg.data());
      // The literal rule: chunk of B*S+1 tokens at k*B*S; row b = [b*S, b*S+S), targets shifted by one.
      for (int b = 0; b < B; b++)
        for (int s = 0; s < S; s++) {
          uint64_t pos = r.begin + k * B * S + uint64_t(b) * S + s;
          ASSERT_EQ(in[b * S + s], int32_t(f[pos]));
          ASSERT_EQ(tg[b * S + s], int32_t(f[pos + 1]));
        }
    }
  }
  // The last full batch's final target is token k*B*S + B*S, which must exist.
  std::vector<int32_t> in(B * S), tg(B * S);
  sequential_batch(f, {0, uint64_t(B * S * 2 + 1)}, B, S, 1, in.data(), tg.data());
  EXPECT_EQ(tg.back(), B * S * 2);
  expect_error([&] { sequential_batch(f, {0, uint64_t(B * S * 2)}, B, S, 1, in.data(), tg.data()); }, {"batch 1"});
  expect_error([&] { Batcher(f, {0, uint64_t(B * S)}, B, S, DataOrder::Sequential); }, {"too few"});
}

// The window each row came from, recovered from tokens 0, 1, 2, ...
static std::vector<uint64_t> drawn_windows(Batcher& bt, int batches) {
  const int B = bt.batch(), S = bt.seq();
  std::vector<int32_t> in(B * S), tg(B * S);
  std::vector<uint64_t> w;
  for (int i = 0; i < batches; i++) {
    bt.next(in.data(), tg.data());
    for (int b = 0; b < B; b++) {
      EXPECT_EQ(in[b * S] % S, 0);
      for (int s = 0; s < S; s++) {
        EXPECT_EQ(in[b * S + s], in[b * S] + s);
        EXPECT_EQ(tg[b * S + s], in[b * S] + s + 1);
      }
      w.push_back(uint64_t(in[b * S] / S));
    }
  }
  return w;
}

TEST(Batcher, ShuffledIsSeededAndCoversEveryWindowOncePerEpoch) {
  const int B = 4, S = 8;
  const uint32_t n = 23 * S + 1 + 5;  // 23 windows, not a multiple of B
  TokenFile f = iota_file("data-shuf", n);
  EXPECT_EQ(window_count(n, S), 23u);
  const uint64_t nw = 23;

  Batcher a(f, f.all(), B, S, DataOrder::Shuffled, 42), b(f, f.all(), B, S, DataOrder::Shuffled, 42),
      c(f, f.all(), B, S, DataOrder::Shuffled, 43);
  const int batches = int(3 * nw / B) + 2;  // a bit over three epochs
  auto wa = drawn_windows(a, batches), wb = drawn_windows(b, batches), wc = drawn_windows(c, batches);
  EXPECT_EQ(wa, wb);
  EXPECT_NE(wa, wc);
  EXPECT_EQ(a.epoch(), 3u);

  std::vector<uint64_t> all(nw);
  for (uint64_t i = 0; i < nw; i++) all[i] = i;
  std::vector<std::vector<uint64_t>> epochs;
  for (int e = 0; e < 3; e++) {
    std::vector<uint64_t> ep(wa.begin() + e * nw, wa.begin() + (e + 1) * nw);
    epochs.push_back(ep);
    std::sort(ep.begin(), ep.end());
    EXPECT_EQ(ep, all) << "epoch " << e;
  }
  EXPECT_NE(epochs[0], epochs[1]);  // a fresh order each epoch
  EXPECT_NE(epochs[0], all);        // actually shuffled
}

TEST(Batcher, StateRestoreContinuesIdentically) {
  const int B = 3, S = 4;
  TokenFile f = iota_file("data-state", 97);
  for (DataOrder order : {DataOrder::Sequential, DataOrder::Shuffled}) {
    Batcher a(f, f.all(), B, S, order, 9);
    std::vector<int32_t> in(B * S), tg(B * S), in2(B * S), tg2(B * S);
    for (int i = 0; i < 13; i++) a.next(in.data(), tg.data());  // past the first epoch

    // Through JSON text, as a checkpoint stores it.
    std::string saved = nlohmann::json(a.state()).dump();
    DataPosition p = nlohmann::json::parse(saved).get<DataPosition>();
    EXPECT_EQ(p, a.state());
    EXPECT_EQ(p.order, to_string(order));

    Batcher b(f, f.all(), B, S, order, order == DataOrder::Shuffled ? 12345 : 0);  // seed comes from the state
    b.restore(p);
    EXPECT_EQ(b.state(), a.state());
    for (int i = 0; i < 20; i++) {
      a.next(in.data(), tg.data());
      b.next(in2.data(), tg2.data());
      ASSERT_EQ(in, in2) << to_string(order) << " step " << i;
      ASSERT_EQ(tg, tg2);
    }
  }
  Batcher s(f, f.all(), B, S, DataOrder::Sequential);
  expect_error([&] { s.restore({"shuffled", 0, 0, 1}); }, {"shuffled"});
  expect_error([&] { s.restore({"sequential", 0, 999, 0}); }, {"999"});
  EXPECT_EQ(parse_data_order("shuffled"), DataOrder::Shuffled);
  expect_error([] { parse_data_order("random"); }, {"random"});
}

TEST(DataSplit, TailFractionInWholeWindows) {
  // 10% of 1000 = 100 tokens -> 7 windows of 16 (7*16+1 = 113 tokens) from the end.
  DataSplit d = split_tail(1000, 0.1, 16);
  EXPECT_EQ(d.val, (TokenRange{887, 1000}));
  EXPECT_EQ(d.train, (TokenRange{0, 887}));
  EXPECT_EQ(window_count(d.val.size(), 16), 7u);
  EXPECT_EQ((d.val.size() - 1) % 16, 0u);

  // Exact fit: ceil(0.25 * 65) = 17 = 1*16 + 1.
  d = split_tail(65, 0.25, 16);
  EXPECT_EQ(d.val, (TokenRange{48, 65}));
  // A tiny fraction still gets one whole window.
  d = split_tail(1000, 0.0001, 16);
  EXPECT_EQ(d.val.size(), 17u);

  expect_error([] { split_tail(1000, 0.0, 16); }, {"0"});
  expect_error([] { split_tail(1000, 1.0, 16); }, {"1"});
  expect_error([] { split_tail(40, 0.5, 16); }, {"too few"});

  // Batchers run over the ranges; validation never sees a training token.
  TokenFile f = iota_file("data-split", 1000);
  d = split_tail(f.size(), 0.1, 16);
  Batcher tr(f, d.train, 2, 16, DataOrder::Shuffled, 1), va(f, d.val, 1, 16, DataOrder::Sequential);
  std::vector<int32_t> in(32), tg(32);
  for (int i = 0; i < 200; i++) {
    tr.next(in.data(), tg.data());
    for (int32_t x : tg) ASSERT_LT(uint64_t(x), d.train.end);
  }
  for (uint64_t i = 0; i < va.batches_per_epoch(); i++) {
    va.next(in.data(), tg.data());
    for (int j = 0; j < 16; j++) ASSERT_GE(uint64_t(in[j]), d.val.begin);
  }
}
