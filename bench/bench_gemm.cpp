// The training GEMMs of train-moe, OpenBLAS sgemm against the bf16 GEMM (`--precision bf16`), one
// shape after the other in the same run. Usage: OMP_NUM_THREADS=2 build/bench_gemm
// Each line: shape, transposes, GFLOP/s of both (median of the calls) and the ratio.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "backend/cpu/gemm_bf16.h"

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

template <class F>
static double median_s(F&& f) {
  f();
  std::vector<double> ts;
  const double start = now();
  while (ts.size() < 5 || (now() - start < 0.5 && ts.size() < 200)) {
    const double t0 = now();
    f();
    ts.push_back(now() - t0);
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

int main() {
  if (!sky::gemm_bf16::supported()) {
    std::printf("this CPU has no AVX512-BF16: nothing to compare\n");
    return 0;
  }
  struct Shape { const char* what; bool ta, tb; int M, N, K; };
  // Tokens 2048 (B=8, S=256), hidden 512, expert width 1408 with ~256 tokens per expert, vocab 8192.
  const Shape shapes[] = {
      {"attn proj fwd", false, true, 2048, 512, 512},  {"attn proj dX", false, false, 2048, 512, 512},
      {"attn proj dW", true, false, 512, 512, 2048},   {"expert up fwd", false, true, 256, 1408, 512},
      {"expert up dX", false, false, 256, 512, 1408},  {"expert up dW", true, false, 1408, 512, 256},
      {"expert down fwd", false, true, 256, 512, 1408}, {"expert down dW", true, false, 512, 1408, 256},
      {"lm head fwd", false, true, 2048, 8192, 512},    {"lm head dX", false, false, 2048, 512, 8192},
      {"lm head dW", true, false, 8192, 512, 2048}};
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  double t_s = 0, t_b = 0;
  for (const Shape& s : shapes) {
    std::vector<float> A(size_t(s.M) * s.K), B(size_t(s.K) * s.N), C(size_t(s.M) * s.N);
    for (auto& v : A) v = nd(rng);
    for (auto& v : B) v = nd(rng);
    const int lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
    const auto ta = s.ta ? CblasTrans : CblasNoTrans, tb = s.tb ? CblasTrans : CblasNoTrans;
    const double ts = median_s([&] {
      cblas_sgemm(CblasRowMajor, ta, tb, s.M, s.N, s.K, 1.0f, A.data(), lda, B.data(), ldb, 1.0f, C.data(), s.N);
    });
    const double tbf = median_s([&] {
      sky::gemm_bf16::gemm(ta, tb, s.M, s.N, s.K, 1.0f, A.data(), lda, B.data(), ldb, 1.0f, C.data(), s.N);
    });
    const double gf = 2.0 * s.M * s.N * s.K / 1e9;
    t_s += ts;
    t_b += tbf;
    std::printf("%-16s %c%c M=%5d N=%5d K=%5d  sgemm %6.1f GFLOP/s  bf16 %6.1f GFLOP/s  %.2fx\n", s.what,
                s.ta ? 'T' : 'N', s.tb ? 'T' : 'N', s.M, s.N, s.K, gf / ts, gf / tbf, ts / tbf);
  }
  std::printf("all shapes: sgemm %.1f ms, bf16 %.1f ms, %.2fx\n", t_s * 1e3, t_b * 1e3, t_s / t_b);
}
