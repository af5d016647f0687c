// The helpers behind `skymoe tokenize` and `skymoe quickstart`: input expansion, document split,
// character coverage, printable sample text, SVG charts.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "infer/text_gen.h"
#include "io/char_coverage.h"
#include "io/doc_split.h"
#include "io/text_files.h"
#include "io/token_data.h"
#include "ref.h"
#include "train/svg_chart.h"

namespace fs = std::filesystem;
using namespace sky;

TEST(TextInputs, DirectoriesSortedWithoutBinariesOrDuplicateLinks) {
  const std::string d = skytest::temp_dir("text-inputs");
  std::ofstream(d + "/b") << "bee\n";
  std::ofstream(d + "/a") << "ay\n";
  std::ofstream(d + "/.hidden") << "no\n";
  {
    std::ofstream bin(d + "/a.dat", std::ios::binary);
    bin.write("\0\0\0\2", 4);
  }
  fs::create_symlink("b", d + "/0-link-to-b");  // sorts first, still loses to its target
  fs::create_directories(d + "/sub");
  std::ofstream(d + "/extra.txt") << "x\n";
  TextFileList l = expand_text_inputs({d + "/extra.txt", d}, "--input");
  ASSERT_EQ(l.files.size(), 3u);
  EXPECT_EQ(l.files[0], d + "/extra.txt");  // given files first, as given; the directory adds the rest
  EXPECT_EQ(l.files[1], d + "/a");
  EXPECT_EQ(l.files[2], d + "/b");
  EXPECT_EQ(l.skipped.size(), 3u);  // a.dat (binary), the link, extra.txt (already given)

  try {
    expand_text_inputs({d + "/missing"}, "--input");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(d + "/missing"), std::string::npos);
  }
  EXPECT_THROW(expand_text_inputs({d + "/sub"}, "--input"), Error);  // no text files in it
}

TEST(DocSplit, EveryNthDocumentToValidation) {
  const std::string d = skytest::temp_dir("doc-split");
  // Documents of 1..7 tokens, each ending with eos = 2 except the last; other ids are 5.
  std::vector<uint32_t> t;
  for (int k = 1; k <= 7; k++) {
    for (int i = 0; i < k - 1; i++) t.push_back(5);
    t.push_back(k < 7 ? 2 : 5);
  }
  write_token_file(d + "/all.bin", t);
  DocSplitStats st = split_documents(d + "/all.bin", 10, 2, 3, d + "/train.bin", d + "/val.bin");
  EXPECT_EQ(st.val_docs, 2u);  // documents 2 and 5 (from 0): 3 and 6 tokens
  EXPECT_EQ(st.train_docs, 5u);
  EXPECT_EQ(st.val_tokens, 9u);
  EXPECT_EQ(st.train_tokens, 19u);
  TokenFile val = TokenFile::open(d + "/val.bin", 10), train = TokenFile::open(d + "/train.bin", 10);
  EXPECT_EQ(val.size(), 9u);
  EXPECT_EQ(train.size(), 19u);
  EXPECT_EQ(val[2], 2u);
  EXPECT_EQ(train[train.size() - 1], 5u);  // the unterminated last document kept as is
  EXPECT_THROW(split_documents(d + "/all.bin", 10, 2, 8, d + "/t2.bin", d + "/v2.bin"), Error);  // < 8 docs
}

TEST(CharCoverage, FitsTheCharacterBudget) {
  const std::string d = skytest::temp_dir("char-cov");
  {
    std::ofstream f(d + "/t");
    for (int i = 0; i < 1000; i++) f << "ab";
    f << "\n";
    const char* rare[] = {"\u4e00", "\u4e8c", "\u4e09", "\u56db"};  // one each
    for (const char* r : rare) f << r;
  }
  EXPECT_EQ(coverage_for_vocab({d + "/t"}, 100), 0.9995);  // 6 characters fit: the cap
  const double c = coverage_for_vocab({d + "/t"}, 3, 1.0);
  EXPECT_GE(c, kMinCoverage);
  EXPECT_LE(c, 2000.0 / 2004.0);  // at most 'a' and 'b' required (one short of the budget of 3)
}

// A vocabulary too small even at the lowest coverage SentencePiece accepts once failed inside its
// trainer with an internal error (tokenize --vocab-size 512 on the fortunes); the count it needs is
// now known up front, for a message that names the vocabulary size to use.
TEST(CharCoverage, TooSmallEvenAtTheLowestCoverageSaysWhatItNeeds) {
  const std::string d = skytest::temp_dir("char-cov-small");
  {
    std::ofstream f(d + "/t");
    for (int rep = 0; rep < 10; rep++)
      for (uint32_t cp = 0x4e00; cp < 0x4e00 + 100; cp++)  // 100 characters, equally frequent
        f << char(0xE0 | (cp >> 12)) << char(0x80 | ((cp >> 6) & 0x3F)) << char(0x80 | (cp & 0x3F));
  }
  int needed = 0;
  EXPECT_EQ(coverage_for_vocab({d + "/t"}, 10, 0.9995, &needed), kMinCoverage);
  EXPECT_EQ(needed, 99);  // 98 characters reach 0.98, plus one for rounding
  try {
    coverage_for_vocab({d + "/t"}, 10);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs 99 characters"), std::string::npos) << e.what();
  }
  needed = 0;
  coverage_for_vocab({d + "/t"}, 200, 0.9995, &needed);
  EXPECT_EQ(needed, 0);  // fits
}

TEST(PrintableText, DropsControlsAndEscapesKeepsText) {
  EXPECT_EQ(printable_text("a\x1b[33mb\x1b[m\tc\n\bd"), "ab\tc\nd");
  EXPECT_EQ(printable_text("\xe4\xba\xba x"), "\xe4\xba\xba x");  // whole characters pass
  EXPECT_EQ(printable_text("\xe4\xba"), "\xef\xbf\xbd");           // a cut one becomes U+FFFD
  PrintableFilter f;  // an escape split across pieces
  std::string got = f.push("x\x1b");
  got += f.push("[3");
  got += f.push("2my");
  EXPECT_EQ(got, "xy");
}

TEST(SvgChart, AxesLegendAndEscaping) {
  ChartSeries s;
  s.label = "a<b";
  s.color = "#123456";
  s.x = {0, 10000, 20000};
  s.y = {3.0, 2.5, 2.25};
  ChartOptions o;
  o.title = "loss & more";
  const std::string svg = svg_line_chart({s}, o);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("a&lt;b"), std::string::npos);
  EXPECT_NE(svg.find("loss &amp; more"), std::string::npos);
  EXPECT_NE(svg.find("stroke=\"#123456\""), std::string::npos);
  EXPECT_NE(svg.find(">20k<"), std::string::npos);  // an x tick label with a suffix
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  const std::vector<double> e = ema({1, 1, 1}, 0.9);
  EXPECT_DOUBLE_EQ(e[0], 1.0);  // bias-corrected: no pull toward 0 at the start
}
