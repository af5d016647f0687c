// The backend op harness (in the spirit of llama.cpp's test-backend-ops): every case of
// backend_op_cases.h at every test shape runs on each backend and on "ref" with the same inputs,
// and every output must agree within rounding. Forward and backward ops, float and double
// overloads. Also: the table covers every op backend.h declares, and the CPU libraries stay
// inside src/backend/cpu (the seam).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "backend/backend.h"
#include "backend_op_cases.h"
#include "core/error.h"

namespace fs = std::filesystem;
using skyops::Dims;
using skyops::OpCase;
using skyops::Prepared;

namespace {

// This checkout's src/, found from this file so the test needs no configured path.
fs::path src_dir() { return fs::weakly_canonical(fs::path(__FILE__).parent_path() / ".." / "src"); }

std::string case_name(const OpCase& c) { return std::string(c.op) + (c.f64 ? "_f64" : ""); }

// |a - b| <= rtol (|b| + rms(b)): relative to the value and to the output's typical size, so an
// entry that cancels to near 0 is not held to a bound its inputs' rounding cannot meet.
template <class T>
void expect_close(const T* a, const T* b, size_t n, double rtol, const std::string& what) {
  double ss = 0;
  for (size_t i = 0; i < n; i++) ss += double(b[i]) * b[i];
  const double rms = n ? std::sqrt(ss / n) : 0;
  size_t bad = 0, first = 0;
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    const double err = std::fabs(double(a[i]) - b[i]), lim = rtol * (std::fabs(double(b[i])) + rms);
    if (!(err <= lim)) {  // also catches NaN
      if (!bad++) first = i;
      worst = std::max(worst, lim > 0 ? err / lim : INFINITY);
    }
  }
  if (bad)
    ADD_FAILURE() << what << ": " << bad << " of " << n << " values differ from ref; first [" << first << "] "
                  << double(a[first]) << " vs " << double(b[first]) << ", worst " << worst << "x the tolerance " << rtol
                  << " (|ref| + rms " << rms << ")";
}

class BackendOps : public ::testing::TestWithParam<size_t> {};

TEST_P(BackendOps, MatchesRef) {
  const OpCase& c = skyops::op_cases()[GetParam()];
  sky::Backend& ref = sky::backend("ref");
  for (const std::string& dev : sky::device_names()) {
    if (dev == "ref") continue;
    sky::Backend& be = sky::backend(dev);
    uint64_t seed = 1;
    for (const Dims& d : c.shapes) {
      const std::string where = fmt::format("{} on {} [{}]", case_name(c), dev, d.str());
      SCOPED_TRACE(where);
      auto got = skyops::prepare(c, d, seed), want = skyops::prepare(c, d, seed);
      seed++;
      got->run(be);
      want->run(ref);
      ASSERT_EQ(got->outs.size(), want->outs.size());
      for (size_t j = 0; j < got->outs.size(); j++) {
        const Prepared::Out &a = got->outs[j], &b = want->outs[j];
        const std::string what = where + " " + a.name;
        if (a.f)
          expect_close(a.f, b.f, a.n, want->rtol, what);
        else
          expect_close(a.d, b.d, a.n, want->rtol, what);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Table, BackendOps, ::testing::Range<size_t>(0, skyops::op_cases().size()),
                         [](const ::testing::TestParamInfo<size_t>& i) {
                           return case_name(skyops::op_cases()[i.param]);
                         });

// The ops of backend.h, read from its declarations (name -> number of overloads), so an op added
// there without a case in the table fails here.
std::map<std::string, int> declared_ops() {
  std::ifstream f(src_dir() / "backend" / "backend.h");
  std::stringstream text;
  text << f.rdbuf();
  const std::string s = text.str();
  static const std::regex decl(R"(virtual[^;{(]*?\b(\w+)\s*\()");
  std::map<std::string, int> ops;
  for (auto it = std::sregex_iterator(s.begin(), s.end(), decl); it != std::sregex_iterator(); ++it)
    if ((*it)[1] != "Backend") ops[(*it)[1]]++;
  return ops;
}

// Set-up calls, not numeric ops: checked by BackendSetUp.Contracts instead of the table.
const std::set<std::string> kSetUp = {"name",
                                      "describe",
                                      "set_threads",
                                      "num_threads",
                                      "set_matmul_precision",
                                      "matmul_precision",
                                      "memory_bandwidth_gbs",
                                      "step_begin",
                                      "step_end"};

TEST(BackendOpsTable, EveryOpRunsOnEveryBackend) {
  const auto ops = declared_ops();
  ASSERT_GT(ops.size(), 20u) << "could not read the ops of " << (src_dir() / "backend" / "backend.h");
  std::map<std::pair<std::string, bool>, std::set<std::string>> ran;  // (op, f64) -> backends
  for (const std::string& dev : sky::device_names()) {
    sky::Backend& be = sky::backend(dev);
    for (const OpCase& c : skyops::op_cases()) {
      EXPECT_TRUE(ops.count(c.op)) << "table case " << case_name(c) << " names no op of backend.h";
      ASSERT_FALSE(c.shapes.empty()) << case_name(c);
      auto p = skyops::prepare(c, c.shapes[0], 1);
      EXPECT_NO_THROW(p->run(be)) << case_name(c) << " on " << dev;
      ran[{c.op, c.f64}].insert(dev);
    }
  }
  for (const auto& [op, overloads] : ops) {
    if (kSetUp.count(op)) continue;
    for (bool f64 : {false, true}) {
      if (f64 && overloads < 2) continue;
      const size_t backends = ran[std::make_pair(op, f64)].size();
      EXPECT_EQ(backends, sky::device_names().size())
          << "op " << op << (f64 ? " (double overload)" : "") << " has no case in tests/backend_op_cases.h";
    }
  }
}

TEST(BackendSetUp, Contracts) {
  for (const std::string& dev : sky::device_names()) {
    sky::Backend& be = sky::backend(dev);
    EXPECT_EQ(be.name(), dev);
    EXPECT_FALSE(be.describe().empty()) << dev;
    EXPECT_GE(be.num_threads(), 1) << dev;
    EXPECT_NO_THROW(be.set_matmul_precision(sky::MatmulPrecision::F32)) << dev;
    EXPECT_EQ(be.matmul_precision(), sky::MatmulPrecision::F32) << dev;
    EXPECT_GT(be.memory_bandwidth_gbs(size_t(1) << 22, 2), 0.0) << dev;
  }
  sky::Backend& ref = sky::backend("ref");
  EXPECT_EQ(ref.describe(), "ref (plain loops, double accumulation)");
  ref.set_threads(8);
  EXPECT_EQ(ref.num_threads(), 1);
  EXPECT_THROW(ref.set_matmul_precision(sky::MatmulPrecision::BF16), sky::Error);
  EXPECT_EQ(ref.matmul_precision(), sky::MatmulPrecision::F32);
  EXPECT_THROW(sky::backend("no-such-device"), sky::Error);
}

// The seam: OpenMP, BLAS and Highway belong to backend/cpu alone, so every other backend (and the
// model code above the seam) builds and runs without them.
TEST(Seam, NoCpuLibrariesOutsideBackendCpu) {
  const fs::path src = src_dir();
  ASSERT_TRUE(fs::is_directory(src)) << src;
  static const std::regex banned(R"(#\s*include\s*<omp\.h>|#\s*pragma\s+omp|cblas|#\s*include\s*["<]hwy/)",
                                 std::regex::icase);
  for (const auto& e : fs::recursive_directory_iterator(src)) {
    if (!e.is_regular_file()) continue;
    const std::string rel = fs::relative(e.path(), src).generic_string();
    if (rel.rfind("backend/cpu/", 0) == 0) continue;
    std::ifstream in(e.path());
    std::string line;
    std::smatch m;
    for (int no = 1; std::getline(in, line); no++)
      if (std::regex_search(line, m, banned))
        ADD_FAILURE() << "src/" << rel << ":" << no << ": '" << m.str() << "' outside src/backend/cpu/";
  }
}

}  // namespace
