// qmatmul speed next to this machine's streaming read bandwidth, measured in the same run.
// Usage: OMP_NUM_THREADS=2 build/bench_qmatmul [--quick] [--no-bf16-dot] [--blocks]
// (--blocks: fp8 and GGUF block types only: q8_0, q4_0, q4_K, q5_K, q6_K with random blocks)
// (--no-bf16-dot: bf16/fp8 weights through the f32 FMA kernels, for comparison)
// (block types are timed twice per N, alternating call by call: as dispatched, and with the int8
// kernels forced ("/i8"), so the ratio of the two comes from the same seconds of a shared machine)
// For each weight shape, dtype and batch N: time per call (median and best of many calls), weight
// bytes read per second (each call reads every weight once) and GFLOP/s. Two bandwidth yardsticks:
// a streaming read of a 1 GiB buffer, and a streaming read of the very same weight buffers with the
// same threads (same bytes, same call length, so the same exposure to a busy shared machine).
// "cold" shapes cycle through enough copies of the weights (>= 256 MiB) that every call reads
// them from DRAM, as decoding does with each layer's weights. "sgemm" rows are OpenBLAS on the
// f32 weights, for comparison.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/qblock.h"
#include "backend/cpu/qmatmul.h"

using namespace sky;

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Seconds per call of f (median and best) after two warm-up calls; at least 5 calls and about
// `budget` seconds. The machine is shared, so the best call shows the kernel and the median the
// conditions.
struct Timing { double median, best; };
template <class F>
static Timing time_calls(F&& f, double budget = 0.4) {
  f();
  f();
  std::vector<double> ts;
  const double start = now();
  while (ts.size() < 5 || (now() - start < budget && ts.size() < 500)) {
    const double t0 = now();
    f();
    ts.push_back(now() - t0);
  }
  std::sort(ts.begin(), ts.end());
  return {ts[ts.size() / 2], ts[0]};
}

// Multi-threaded streaming read of n bytes (a multiple of 64), split like qmatmul splits weights.
static uint64_t read_bytes(const void* p, size_t n) {
  const auto* u = static_cast<const uint64_t*>(p);
  uint64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (size_t b = 0; b < n / 64; b++) {
    const uint64_t* q = u + b * 8;
    total += (q[0] + q[1]) + (q[2] + q[3]) + (q[4] + q[5]) + (q[6] + q[7]);
  }
  return total;
}

static volatile uint64_t g_sink;
static const char* const kPanelNames[] = {"int8", "bf16 panels", "f32 panels"};  // qblock::Panels

// GB/s reading a 1 GiB buffer (median and best call).
static Timing read_bandwidth() {
  const size_t n = size_t(1) << 30;
  std::unique_ptr<uint64_t[]> buf(new uint64_t[n / 8]);
#pragma omp parallel for schedule(static)  // first touch by the threads that read it later
  for (size_t i = 0; i < n / 8; i++) buf[i] = i;
  const Timing t = time_calls([&] { g_sink = g_sink + read_bytes(buf.get(), n); }, 3.0);
  return {double(n) / t.median / 1e9, double(n) / t.best / 1e9};
}

// `copies` QWeights with the same values in separate memory: cycling through them makes every call
// read its weights from DRAM, as decode does (each layer's weights once per token).
static std::vector<QWeight> make_copies(const QWeight& q, int copies) {
  std::vector<QWeight> out{q};
  for (int c = 1; c < copies; c++) {
    QWeight k = q;
    k.storage = Tensor::empty(q.storage.dtype, q.storage.shape);
    std::memcpy(k.storage.data, q.data, q.storage.nbytes());
    k.data = k.storage.data;
    out.push_back(k);
  }
  return out;
}

int main(int argc, char** argv) {
  bool quick = false, blocks = false;
  for (int i = 1; i < argc; i++) {
    if (std::strcmp(argv[i], "--blocks") == 0) blocks = true;
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    if (std::strcmp(argv[i], "--no-bf16-dot") == 0) qmatmul_set_bf16_dot(false);
  }
  std::printf("block kernels: %s\n", qblock::target());
  std::printf("qmatmul target %s, bf16 dot products for bf16/fp8 weights: %s, %d threads\n", qmatmul_target(),
              qmatmul_uses_bf16_dot(DType::F8_E4M3) ? "yes" : "no", omp_get_max_threads());
  const Timing bw = read_bandwidth();
  std::printf("memory read bandwidth (1 GiB, %d threads): median %.1f GB/s, best %.1f GB/s\n\n",
              omp_get_max_threads(), bw.median, bw.best);

  struct Shape { const char* name; int O, I; bool cold; };
  const Shape shapes[] = {{"expert w1, hot", 2816, 1024, false},
                          {"16 experts' w1, cold", 16 * 2816, 1024, true},
                          {"LM head, cold", 32000, 1024, true}};
  const int Ns[] = {1, 4, 16, 64};
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 0.02f);

  std::printf("%-20s %-5s %3s | %8s %8s | %6s %6s | %7s | %13s | %13s\n", "weights [O x 1024]", "dtype", "N",
              "us med", "best", "GB/s", "best", "GFLOP/s", "% 1GiB probe", "% same bytes");
  std::printf("%-20s %-5s %3s | %8s %8s | %6s %6s | %7s | %6s %6s | %6s %6s\n", "", "", "", "", "", "med", "", "best",
              "med", "best", "med", "best");
  for (const auto& sh : shapes) {
    if (quick && !sh.cold) continue;
    std::vector<float> w(size_t(sh.O) * sh.I);
    for (auto& v : w) v = nd(rng);
    std::vector<float> x(size_t(64) * sh.I), y(size_t(64) * sh.O);
    for (auto& v : x) v = nd(rng) * 50;
    struct Variant { const char* name; DType t; BlockType b; };
    const Variant all[] = {{"f32", DType::F32, BlockType::F32},       {"bf16", DType::BF16, BlockType::F32},
                           {"fp8", DType::F8_E4M3, BlockType::F32},   {"sgemm", DType::F32, BlockType::F32},
                           {"q8_0", DType::Blocks, BlockType::Q8_0},  {"q4_0", DType::Blocks, BlockType::Q4_0},
                           {"q4_K", DType::Blocks, BlockType::Q4_K},  {"q5_K", DType::Blocks, BlockType::Q5_K},
                           {"q6_K", DType::Blocks, BlockType::Q6_K}};
    for (const Variant& v : all) {
      if (quick && v.name[0] == 's') continue;
      if (blocks && v.t != DType::Blocks && v.t != DType::F8_E4M3) continue;
      if (!blocks && v.t == DType::Blocks && quick) continue;
      QWeight q0;
      if (v.t == DType::Blocks) {  // random bytes with small f16 scales: the speed does not depend on values
        const size_t rb = block_row_bytes(v.b, sh.I), nb = size_t(sh.O) * rb;
        Tensor buf = Tensor::empty(DType::U32, {int64_t(nb / 4)});
        auto* p = static_cast<uint8_t*>(buf.data);
        for (size_t k = 0; k < nb; k++) p[k] = uint8_t(rng());
        const size_t bb = size_t(block_bytes(v.b)), off = v.b == BlockType::Q6_K ? 208 : 0;
        for (size_t k = 0; k + bb <= nb; k += bb) p[k + off + 1] = 0x1c;  // f16 exponent ~2^-8
        q0 = block_weight(v.b, buf.data, buf.owner, sh.O, sh.I);
        q0.storage = buf;
      } else {
        q0 = quantize_weight(w.data(), sh.O, sh.I, v.t, true);
      }
      const int copies = sh.cold ? int((size_t(256) << 20) / q0.bytes()) + 1 : 1;
      const std::vector<QWeight> qs = make_copies(q0, copies);
      const size_t nbytes = q0.storage.nbytes() / 64 * 64;
      const double gb = double(q0.bytes()) / 1e9;
      size_t c = 0;
      const Timing same = time_calls([&] { g_sink = g_sink + read_bytes(qs[c++ % qs.size()].data, nbytes); });
      const double same_med = double(nbytes) / 1e9 / same.median, same_best = double(nbytes) / 1e9 / same.best;
      for (int N : Ns) {
        if (v.t == DType::Blocks) {
          // Both paths, call by call in turn, so both see the same machine.
          std::vector<double> ta, tb;
          for (int k = 0; k < 2; k++) qmatmul(y.data(), x.data(), qs[c++ % qs.size()], N);
          const double start = now();
          while (ta.size() < 5 || (now() - start < 0.8 && ta.size() < 500)) {
            for (int path = 0; path < 2; path++) {
              qblock::set_panel_min_rows(path ? 1 << 30 : 0);
              const double t0 = now();
              qmatmul(y.data(), x.data(), qs[c++ % qs.size()], N);
              (path ? tb : ta).push_back(now() - t0);
            }
          }
          qblock::set_panel_min_rows(0);
          std::sort(ta.begin(), ta.end());
          std::sort(tb.begin(), tb.end());
          const double a = ta[0], b = tb[0];
          std::printf("%-20s %-5s %3d | best us: dispatched %8.0f (%s), int8 kernels %8.0f | GFLOP/s %6.1f vs %6.1f | "
                      "%4.2fx | %5.0f%% of same-bytes read\n",
                      sh.name, v.name, N, a * 1e6, kPanelNames[int(qblock::panels(q0, N))], b * 1e6,
                      2.0 * N * sh.O * sh.I / a / 1e9, 2.0 * N * sh.O * sh.I / b / 1e9, b / a,
                      100 * gb / a / same_best);
          continue;
        }
        Timing t;
        if (v.name[0] == 's')
          t = time_calls([&] {
            const QWeight& q = qs[c++ % qs.size()];
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, sh.O, sh.I, 1.0f, x.data(), sh.I,
                        static_cast<const float*>(q.data), sh.I, 0.0f, y.data(), sh.O);
          });
        else
          t = time_calls([&] { qmatmul(y.data(), x.data(), qs[c++ % qs.size()], N); });
        std::printf("%-20s %-5s %3d | %8.0f %8.0f | %6.1f %6.1f | %7.1f | %5.0f%% %5.0f%% | %5.0f%% %5.0f%%\n", sh.name,
                    v.name, N, t.median * 1e6, t.best * 1e6, gb / t.median, gb / t.best,
                    2.0 * N * sh.O * sh.I / t.best / 1e9, 100 * gb / t.median / bw.median,
                    100 * gb / t.best / bw.best, 100 * gb / t.median / same_med, 100 * gb / t.best / same_best);
      }
      std::printf("%-20s %-5s read the same bytes: %.1f GB/s median, %.1f best\n", sh.name, v.name, same_med,
                  same_best);
    }
  }
  const Timing bw2 = read_bandwidth();
  std::printf("\nmemory read bandwidth again: median %.1f GB/s, best %.1f GB/s\n", bw2.median, bw2.best);
}
