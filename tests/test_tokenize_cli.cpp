// End-to-end checks of `skymoe tokenize` and a tiny `skymoe quickstart`, through the built binary.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "ref.h"

namespace fs = std::filesystem;

namespace {

struct CliRun {
  int rc = -1;
  std::string out;  // stdout and stderr together
};

CliRun run(const std::string& args) {
  const std::string cmd = std::string(SKYMOE_BIN) + " " + args + " 2>&1";
  CliRun r;
  std::FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Fortune-style files: `docs` short documents separated by "%" lines, spread over two files.
std::string make_corpus(const std::string& tag, int docs) {
  const std::string dir = skytest::temp_dir(tag) + "/corpus";
  fs::create_directories(dir);
  const char* words[] = {"the", "cat", "dog", "runs", "over", "a", "lazy", "fox", "quick", "brown", "tree",
                         "house", "river", "code", "bug", "kernel", "expert", "router", "token", "moe"};
  std::mt19937 rng(7);
  std::ofstream f1(dir + "/alpha"), f2(dir + "/beta");
  for (int d = 0; d < docs; d++) {
    std::ofstream& f = d % 2 ? f2 : f1;
    const int n = 6 + int(rng() % 14);
    for (int w = 0; w < n; w++) f << (w ? " " : "") << words[rng() % std::size(words)];
    f << ".\n%\n";
  }
  return dir;
}

}  // namespace

TEST(TokenizeCli, TrainsTokenizerAndWritesIdsBelowVocab) {
  const std::string corpus = make_corpus("cli-tok", 300);
  // Beside the text: a binary index like fortune's .dat files and a symlink duplicate (.u8); both
  // must be skipped, or the document count below would be off.
  {
    std::ofstream dat(corpus + "/alpha.dat", std::ios::binary);
    const char bin[] = {0, 0, 0, 2, 0, 0, 1, 44, '%', '\n'};
    dat.write(bin, sizeof bin);
  }
  fs::create_symlink("alpha", corpus + "/alpha.u8");
  const std::string out = fs::path(corpus).parent_path().string();
  CliRun r = run("tokenize --input " + corpus + " --out " + out + "/tok.bin --train-tokenizer " + out +
              "/t.model --vocab-size 400");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_NE(r.out.find("300 documents"), std::string::npos) << r.out;
  ASSERT_TRUE(fs::exists(out + "/t.model"));
  const std::string bytes = slurp(out + "/tok.bin");
  ASSERT_GT(bytes.size(), 0u);
  ASSERT_EQ(bytes.size() % 4, 0u);
  std::vector<uint32_t> ids(bytes.size() / 4);
  std::memcpy(ids.data(), bytes.data(), bytes.size());
  for (uint32_t id : ids) ASSERT_LT(id, 400u);
  EXPECT_EQ(ids.back(), 2u);  // eos closes each document by default

  // The trained model loads back; --bos --no-eos with one document per line.
  r = run("tokenize --input " + corpus + "/alpha --out " + out + "/tok2.bin --tokenizer " + out +
          "/t.model --separator line --bos --no-eos");
  ASSERT_EQ(r.rc, 0) << r.out;
  const std::string b2 = slurp(out + "/tok2.bin");
  ASSERT_GE(b2.size(), 4u);
  uint32_t first, last;
  std::memcpy(&first, b2.data(), 4);
  std::memcpy(&last, b2.data() + b2.size() - 4, 4);
  EXPECT_EQ(first, 1u);
  EXPECT_NE(last, 2u);
}

TEST(TokenizeCli, ErrorsNameTheProblem) {
  const std::string dir = skytest::temp_dir("cli-tok-err");
  CliRun r = run("tokenize --input " + dir + "/no-such-file.txt --out " + dir + "/t.bin --train-tokenizer " + dir +
              "/t.model --vocab-size 400");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find(dir + "/no-such-file.txt"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir + "/t.bin"));

  std::ofstream(dir + "/a.txt") << "hello world\n";
  r = run("tokenize --input " + dir + "/a.txt --out " + dir + "/t.bin");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("--tokenizer"), std::string::npos) << r.out;

  r = run("tokenize --input " + dir + "/a.txt --out " + dir + "/t.bin --train-tokenizer " + dir + "/t.model");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("--vocab-size"), std::string::npos) << r.out;

  r = run("tokenize --input " + dir + "/a.txt --out " + dir + "/t.bin --tokenizer " + dir + "/a.txt");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find(dir + "/a.txt"), std::string::npos) << r.out;

  r = run("tokenize --input " + dir + "/a.txt --out " + dir + "/t.bin --tokenizer x --separator comma");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("--separator"), std::string::npos) << r.out;
}

TEST(QuickstartCli, TinyRunWritesReportLogsAndCheckpoints) {
  const std::string corpus = make_corpus("cli-qs", 400);
  const std::string out = fs::path(corpus).parent_path().string() + "/run";
  CliRun r = run("quickstart --corpus " + corpus + " --out " + out +
              " --threads 1 --vocab-size 400 --hidden 32 --layers 2 --heads 2 --intermediate 64 --seq-len 32"
              " --batch-size 4 --dense-steps 6 --moe-steps 6 --experts 4 --eval-batches 2 --evals 2"
              " --sample-tokens 8");
  ASSERT_EQ(r.rc, 0) << r.out;
  const std::string html = slurp(out + "/report.html");
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_NE(html.find("upcycled MoE"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);  // self-contained, nothing to run or fetch
  // Adaptive aux loss vs aux-loss-free balancing: charts, the per-layer table, both runs' logs.
  EXPECT_NE(html.find("Load balancing: upcycled MoE vs upcycled MoE, aux-free"), std::string::npos);
  EXPECT_NE(html.find("load imbalance per layer"), std::string::npos);
  EXPECT_NE(html.find("selection-bias range per layer"), std::string::npos);
  EXPECT_NE(html.find("<th>all layers</th>"), std::string::npos);
  EXPECT_NE(slurp(out + "/upcycled-auxfree/train.jsonl").find("\"bias_range\""), std::string::npos);
  for (const char* run_dir : {"dense", "upcycled", "upcycled-auxfree", "scratch"}) {
    const std::string log = slurp(out + "/" + run_dir + "/train.jsonl");
    EXPECT_NE(log.find("\"step\":6"), std::string::npos) << run_dir;
    EXPECT_TRUE(fs::exists(out + "/" + run_dir + "/latest")) << run_dir;
  }
  EXPECT_NE(slurp(out + "/quickstart.json").find("\"done\""), std::string::npos);

  // A second run into the same directory replaces its own results.
  r = run("quickstart --corpus " + corpus + " --out " + out +
          " --threads 1 --vocab-size 400 --hidden 32 --layers 1 --heads 2 --intermediate 32 --seq-len 32"
          " --batch-size 4 --dense-steps 2 --moe-steps 2 --experts 2 --eval-batches 1 --evals 1 --sample-tokens 0");
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_FALSE(fs::exists(out + "/dense/step-00000006"));
}

TEST(QuickstartCli, MissingCorpusAndForeignOutDirAreErrors) {
  const std::string dir = skytest::temp_dir("cli-qs-err");
  CliRun r = run("quickstart --corpus " + dir + "/nowhere --out " + dir + "/run");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find(dir + "/nowhere"), std::string::npos) << r.out;

  const std::string corpus = make_corpus("cli-qs-err2", 40);
  fs::create_directories(dir + "/mine");
  std::ofstream(dir + "/mine/precious.txt") << "keep me\n";
  r = run("quickstart --corpus " + corpus + " --out " + dir + "/mine --dense-steps 1");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("quickstart.json"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(dir + "/mine/precious.txt"));
}
