#include "backend/cpu/gemm_bf16.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "core/scratch.h"

// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_* (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define SKY_BF16 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))

namespace sky::gemm_bf16 {

bool supported() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
  }();
  return ok;
}

namespace {

// Goto-style blocking. A K block of kKC values is 256 bf16 pairs; a packed B micro-panel (kKC x 32
// bf16 = 32 KiB) is swept by the kMC x kKC A block (96 KiB, in L2). The whole packed B block
// (kKC x N) lives in L3 and is shared by both threads. kKC 256..512 and kMC 48..192 measured within
// a few percent of each other (bench/bench_gemm); 512 reads and writes C half as often.
constexpr int kMR = 12, kNR = 32, kKC = 512, kMC = 8 * kMR;

// 16 x 16 transpose of 32-bit elements: r[i] lane j -> r[j] lane i.
SKY_BF16 inline void transpose16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // u[4g + c], lane L: rows 4g..4g+3 of column 4L + c.
  for (int g = 0; g < 4; g++) {
    const __m512i* q = t + 4 * g;
    u[4 * g + 0] = _mm512_unpacklo_epi64(q[0], q[2]);
    u[4 * g + 1] = _mm512_unpackhi_epi64(q[0], q[2]);
    u[4 * g + 2] = _mm512_unpacklo_epi64(q[1], q[3]);
    u[4 * g + 3] = _mm512_unpackhi_epi64(q[1], q[3]);
  }
  for (int c = 0; c < 4; c++) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), w0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xDD);
    const __m512i v1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88),
                  w1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xDD);
    r[c] = _mm512_shuffle_i32x4(v0, v1, 0x88);
    r[8 + c] = _mm512_shuffle_i32x4(v0, v1, 0xDD);
    r[4 + c] = _mm512_shuffle_i32x4(w0, w1, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(w0, w1, 0xDD);
  }
}

// Word order that interleaves two converted rows: word 2t <- row 0's element t, 2t+1 <- row 1's.
SKY_BF16 inline __m512i interleave_words() {
  alignas(64) uint16_t order[32];
  for (int t = 0; t < 16; t++) {
    order[2 * t] = uint16_t(t);
    order[2 * t + 1] = uint16_t(16 + t);
  }
  return _mm512_load_si512(order);
}

inline __mmask16 first(int n) { return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? 0 : __mmask16((1u << n) - 1); }

// Both packers write bf16 pairs (round to nearest even, NaN kept) in panels of W rows ("i"):
// panel q holds rows [qW, qW + W) at dst + q * W * kpn, as dst[kp * W + i] = (x[i][2kp],
// x[i][2kp+1]); rows >= n_i and k >= n_k are zero. They differ in which stride of the source is 1.

// k contiguous (x[i][k] = src[i * s_i + k]), one panel: each row gives 16 pairs per two loads and a
// 16 x 16 transpose puts them in place.
SKY_BF16 void pack_kcontig(uint32_t* dst, const float* src, long s_i, int n_i, int W, int n_k) {
  const int kpn = (n_k + 1) / 2;
  for (int i0 = 0; i0 < W; i0 += 16) {
    const __mmask16 store = first(W - i0);
    for (int kp0 = 0; kp0 < kpn; kp0 += 16) {
      const int k0 = 2 * kp0;
      __m512i r[16];
      for (int i = 0; i < 16; i++) {
        if (i0 + i >= n_i) {
          r[i] = _mm512_setzero_si512();
          continue;
        }
        const float* p = src + (i0 + i) * s_i + k0;
        const __m512 f0 = _mm512_maskz_loadu_ps(first(n_k - k0), p);
        const __m512 f1 = _mm512_maskz_loadu_ps(first(n_k - k0 - 16), p + 16);
        r[i] = (__m512i)_mm512_cvtne2ps_pbh(f1, f0);  // dword t = pair kp0 + t
      }
      transpose16(r);
      for (int t = 0; t < 16 && kp0 + t < kpn; t++)
        _mm512_mask_storeu_epi32(dst + size_t(kp0 + t) * W + i0, store, r[t]);
    }
  }
}

// Rows contiguous (x[i][k] = src[i + k * s_k]), every panel, pairs [kp_begin, kp_end) only (so
// threads can split the work): each pair of k rows is read whole and fills every panel. Streaming
// row by row matters: filling one panel at a time reads short pieces of every row, a row stride
// apart, the hardware prefetcher's worst case.
SKY_BF16 void pack_icontig(uint32_t* dst, const float* src, long s_k, int n_i, int W, int n_k, int kp_begin,
                           int kp_end) {
  const int kpn = (n_k + 1) / 2, panels = (n_i + W - 1) / W;
  const __m512i perm = interleave_words();
  for (int kp = kp_begin; kp < kp_end; kp++) {
    const float* r0 = src + 2L * kp * s_k;
    const bool two = 2 * kp + 1 < n_k;
    for (int q = 0; q < panels; q++)
      for (int i0 = 0; i0 < W; i0 += 16) {
        const int row = q * W + i0;
        const __mmask16 load = first(std::min(W - i0, n_i - row));
        const __m512 f0 = _mm512_maskz_loadu_ps(load, r0 + row);
        const __m512 f1 = two ? _mm512_maskz_loadu_ps(load, r0 + s_k + row) : _mm512_setzero_ps();
        const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(f1, f0);
        _mm512_mask_storeu_epi32(dst + size_t(q) * W * kpn + size_t(kp) * W + i0, first(W - i0),
                                 _mm512_permutexvar_epi16(perm, both));
      }
  }
}

// C tile (mr x nr valid of kMR x kNR) = alpha * sum_kp a[kp] b[kp] + beta * C. Each lane of a
// vdpbf16ps adds a[i][2kp] b[2kp][j] + a[i][2kp+1] b[2kp+1][j]: A's pair is broadcast, B's panel
// holds 16 column pairs per register. 24 accumulators + 2 B registers fit AVX-512's 32.
SKY_BF16 void kernel(int kpn, const uint32_t* a, const uint32_t* b, float* C, long ldc, int mr, int nr, float alpha,
                     float beta) {
  __m512 acc[kMR][2];
#pragma GCC unroll 12
  for (int i = 0; i < kMR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int kp = 0; kp < kpn; kp++) {
    const __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 16);
#pragma GCC unroll 12
    for (int i = 0; i < kMR; i++) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(int(a[i]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
    }
    a += kMR;
    b += kNR;
  }
  const __mmask16 m0 = nr >= 16 ? 0xFFFF : __mmask16((1u << nr) - 1);
  const __mmask16 m1 = nr >= 32 ? 0xFFFF : nr > 16 ? __mmask16((1u << (nr - 16)) - 1) : 0;
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int i = 0; i < mr; i++) {
    float* c = C + i * ldc;
    __m512 r0 = _mm512_mul_ps(acc[i][0], va), r1 = _mm512_mul_ps(acc[i][1], va);
    if (beta != 0.0f) {
      r0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, c), vb, r0);
      r1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, c + 16), vb, r1);
    }
    _mm512_mask_storeu_ps(c, m0, r0);
    _mm512_mask_storeu_ps(c + 16, m1, r1);
  }
}

}  // namespace

void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  // op(A)[i][k] = A[i * a_i + k * a_k]; op(B)[k][j] = B[j * b_j + k * b_k].
  const long a_i = ta == CblasNoTrans ? lda : 1, a_k = ta == CblasNoTrans ? 1 : lda;
  const long b_j = tb == CblasNoTrans ? 1 : ldb, b_k = tb == CblasNoTrans ? ldb : 1;
  if (K <= 0) {  // C = beta C
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) C[long(i) * ldc + j] = beta == 0.0f ? 0.0f : beta * C[long(i) * ldc + j];
    return;
  }
  const int n_panels = (N + kNR - 1) / kNR, n_ic = (M + kMC - 1) / kMC;
  // Enough tasks for every thread: split N into column chunks when M alone gives too few blocks.
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const int n_jc = std::min(n_panels, std::max(1, (2 * threads + n_ic - 1) / n_ic));
  const int jc_panels = (n_panels + n_jc - 1) / n_jc;
  static thread_local AlignedScratch<uint32_t> b_scratch;
  uint32_t* bp = b_scratch.get(size_t(n_panels) * kNR * (kKC / 2));

  for (int pc = 0; pc < K; pc += kKC) {
    const int kc = std::min(kKC, K - pc), kpn = (kc + 1) / 2;
    const float step_beta = pc == 0 ? beta : 1.0f;  // later K blocks add to what the first wrote
#pragma omp parallel if (threads > 1 && double(M) * N * kc > 1e5)
    {
      if (b_j == 1) {
        const int nt = omp_get_num_threads(), t = omp_get_thread_num();
        pack_icontig(bp, B + long(pc) * b_k, b_k, N, kNR, kc, kpn * t / nt, kpn * (t + 1) / nt);
#pragma omp barrier
      } else {
#pragma omp for schedule(static)
        for (int p = 0; p < n_panels; p++)
          pack_kcontig(bp + size_t(p) * kNR * kpn, B + long(p) * kNR * b_j + long(pc), b_j,
                       std::min(kNR, N - p * kNR), kNR, kc);
      }
      static thread_local AlignedScratch<uint32_t> a_scratch;
      uint32_t* ap = a_scratch.get(size_t(kMC) * kpn);
#pragma omp for schedule(dynamic)
      for (int t = 0; t < n_ic * n_jc; t++) {
        const int i0 = (t / n_jc) * kMC, mc = std::min(kMC, M - i0);
        const int p0 = (t % n_jc) * jc_panels, p1 = std::min(n_panels, p0 + jc_panels);
        const float* a0 = A + long(i0) * a_i + long(pc) * a_k;
        if (a_i == 1)
          pack_icontig(ap, a0, a_k, mc, kMR, kc, 0, kpn);
        else
          for (int ir = 0; ir < mc; ir += kMR)
            pack_kcontig(ap + size_t(ir) * kpn, a0 + long(ir) * a_i, a_i, std::min(kMR, mc - ir), kMR, kc);
        for (int p = p0; p < p1; p++) {
          const int j0 = p * kNR, nr = std::min(kNR, N - j0);
          for (int ir = 0; ir < mc; ir += kMR)
            kernel(kpn, ap + size_t(ir) * kpn, bp + size_t(p) * kNR * kpn, C + long(i0 + ir) * ldc + j0, ldc,
                   std::min(kMR, mc - ir), nr, alpha, step_beta);
        }
      }
    }
  }
}

}  // namespace sky::gemm_bf16
