// Multi-head latent attention at decode: the engine's absorbed form against up-projecting the cache.
// One layer of DeepSeek-V2-Lite's attention (16 heads, kv_lora_rank 512, q/k heads 128 + 64, v 128)
// decoding one token over a context of C positions, through the backend's ops:
//   absorbed   (what decoder.cpp's mla_attend_kv does) per head q_nope -> latent (uk), attention_kv
//              with one shared key/value head of width 576 over the latent rows, per head latent
//              context -> values (uv);
//   up-project the C cached latents through kv_b_proj (keys and values of every head), then
//              attention_kv over them as 16 heads of 192 (values padded, as training does).
// Usage: OMP_NUM_THREADS=2 build/bench_mla [--device cpu|ref] [--heads 16]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"

using namespace sky;

static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

template <class F>
static double best_of(F&& f, double budget = 0.5) {
  f();
  double best = 1e30;
  const double start = now();
  for (int i = 0; i < 3 || (now() - start < budget && i < 200); i++) {
    const double t0 = now();
    f();
    best = std::min(best, now() - t0);
  }
  return best;
}

int main(int argc, char** argv) {
  std::string device = "cpu";
  int nh = 16;
  for (int i = 1; i + 1 < argc; i++) {
    if (std::string(argv[i]) == "--device") device = argv[++i];
    else if (std::string(argv[i]) == "--heads") nh = std::stoi(argv[++i]);
  }
  Backend& be = backend(device);
  const int r = 512, dr = 64, dn = 128, dv = 128, hd = dn + dr, L = r + dr;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto rnd = [&](size_t n, float s) {
    std::vector<float> v(n);
    for (float& x : v) x = nd(rng) * s;
    return v;
  };
  const std::vector<float> kvb_w = rnd(size_t(nh) * (dn + dv) * r, 1 / std::sqrt(float(r)));
  std::vector<QWeight> uk(nh), uv(nh);
  for (int h = 0; h < nh; h++) {
    std::vector<float> t(size_t(r) * dn);
    const float* rows = kvb_w.data() + size_t(h) * (dn + dv) * r;
    for (int i = 0; i < dn; i++)
      for (int j = 0; j < r; j++) t[size_t(j) * dn + i] = rows[size_t(i) * r + j];
    uk[h] = quantize_weight(t.data(), r, dn, DType::BF16, true);
    uv[h] = quantize_weight(rows + size_t(dn) * r, dv, r, DType::BF16, true);
  }
  const QWeight kvb = quantize_weight(kvb_w.data(), nh * (dn + dv), r, DType::BF16, true);
  std::printf("%s, %d heads, kv_lora_rank %d, q/k head %d + %d, v head %d; bf16 weights, f32 cache\n",
              be.describe().c_str(), nh, r, dn, dr, dv);
  std::printf("%8s  %14s  %14s  %8s  %16s  %16s\n", "context", "absorbed us", "up-project us", "ratio",
              "latent B/token", "full K+V B/token");
  for (int C : {64, 256, 1024, 4096}) {
    const std::vector<float> lat = rnd(size_t(C) * L, 1.0f), q = rnd(size_t(nh) * hd, 1.0f);
    std::vector<float> qlat(size_t(nh) * L), ctxl(size_t(nh) * L), in(r), out(r), ctx(size_t(nh) * dv);
    std::vector<float> kv(size_t(C) * nh * (dn + dv)), K(size_t(C) * nh * hd), V(size_t(C) * nh * hd),
        ctxp(size_t(nh) * hd), c(size_t(C) * r);
    const double t_abs = best_of([&] {
      for (int h = 0; h < nh; h++) {
        be.copy_cols(in.data(), dn, q.data() + size_t(h) * hd, nh * hd, 1, dn, false);
        be.linear(out.data(), in.data(), uk[h], 1);
        be.copy_cols(qlat.data() + size_t(h) * L, nh * L, out.data(), r, 1, r, false);
      }
      be.copy_cols(qlat.data() + r, L, q.data() + dn, hd, nh, dr, false);
      AttnSeq a{ctxl.data(), qlat.data(), KvView{lat.data(), lat.data(), nullptr, nullptr}, C - 1, 1};
      be.attention_kv(&a, 1, nh, 1, L);
      for (int h = 0; h < nh; h++) {
        be.copy_cols(in.data(), r, ctxl.data() + size_t(h) * L, nh * L, 1, r, false);
        be.linear(out.data(), in.data(), uv[h], 1);
        be.copy_cols(ctx.data() + size_t(h) * dv, nh * dv, out.data(), dv, 1, dv, false);
      }
    });
    const double t_up = best_of([&] {
      // The normed latents (first r of each row) through kv_b: [C, nh (dn + dv)].
      be.copy_cols(c.data(), r, lat.data(), L, C, r, false);
      be.linear(kv.data(), c.data(), kvb, C);
      be.copy_cols(K.data(), hd, kv.data(), dn + dv, long(C) * nh, dn, false);
      for (int h = 0; h < nh; h++) be.copy_cols(K.data() + size_t(h) * hd + dn, nh * hd, lat.data() + r, L, C, dr, false);
      be.copy_cols(V.data(), hd, kv.data() + dn, dn + dv, long(C) * nh, dv, false);
      AttnSeq a{ctxp.data(), q.data(), KvView{K.data(), V.data(), nullptr, nullptr}, C - 1, 1};
      be.attention_kv(&a, 1, nh, nh, hd);
    });
    std::printf("%8d  %14.1f  %14.1f  %7.1fx  %16d  %16d\n", C, t_abs * 1e6, t_up * 1e6, t_up / t_abs, L * 4,
                nh * (hd + dv) * 4);
  }
  return 0;
}
