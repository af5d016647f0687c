#include "backend/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "backend/cpu/attention_decode.h"
#include "backend/cpu/blas.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/vmath.h"

namespace sky {

static void check_heads(int n_heads, int n_kv) {
  SKY_CHECK(n_kv > 0 && n_heads % n_kv == 0, "attention: {} query heads do not split into {} kv heads", n_heads,
            n_kv);
}

// Per (b, h) the work is three small GEMMs on strided views of q/k/v. The full T x T score matrix
// is computed and the upper triangle discarded: twice the causal flops, but BLAS-fast, which beats
// scalar loops by far. Inside our parallel region OpenBLAS (OpenMP build) runs single-threaded.

template <class T>
void attention_forward(T* out, T* att, const T* q, const T* k, const T* v, int B, int Tn, int n_heads, int n_kv,
                       int hd) {
  check_heads(n_heads, n_kv);
  int C = n_heads * hd, Ckv = n_kv * hd, group = n_heads / n_kv;
  T scale = T(1) / std::sqrt((T)hd);
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; b++)
    for (int h = 0; h < n_heads; h++) {
      const T* qh = q + (long)b * Tn * C + h * hd;
      const T* kh = k + (long)b * Tn * Ckv + (h / group) * hd;
      const T* vh = v + (long)b * Tn * Ckv + (h / group) * hd;
      T* oh = out + (long)b * Tn * C + h * hd;
      T* P = att + ((long)b * n_heads + h) * Tn * Tn;
      train_gemm(false, CblasNoTrans, CblasTrans, Tn, Tn, hd, scale, qh, C, kh, Ckv, T(0), P, Tn);
      for (int i = 0; i < Tn; i++) {
        T* p = P + (long)i * Tn;
        if constexpr (std::is_same_v<T, float>) {  // vectorized exponentials
          softmax_inplace(p, i + 1);
          std::fill(p + i + 1, p + Tn, 0.0f);
          continue;
        }
        T mx = p[0];
        for (int j = 1; j <= i; j++) mx = p[j] > mx ? p[j] : mx;
        T sum = 0;
        for (int j = 0; j <= i; j++) {
          p[j] = std::exp(p[j] - mx);
          sum += p[j];
        }
        T inv = T(1) / sum;
        for (int j = 0; j <= i; j++) p[j] *= inv;
        for (int j = i + 1; j < Tn; j++) p[j] = 0;
      }
      train_gemm(false, CblasNoTrans, CblasNoTrans, Tn, hd, Tn, T(1), P, Tn, vh, Ckv, T(0), oh, C);
    }
}

template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* att,
                        int B, int Tn, int n_heads, int n_kv, int hd) {
  check_heads(n_heads, n_kv);
  int C = n_heads * hd, Ckv = n_kv * hd, group = n_heads / n_kv;
  T scale = T(1) / std::sqrt((T)hd);
  // One task per (b, kv head): its query heads all add into the same dk/dv slice, so that slice
  // has a single writer.
#pragma omp parallel
  {
    std::vector<T> dS((size_t)Tn * Tn);
#pragma omp for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
      for (int g = 0; g < n_kv; g++) {
        const T* kh = k + (long)b * Tn * Ckv + g * hd;
        const T* vh = v + (long)b * Tn * Ckv + g * hd;
        T* dkh = dk + (long)b * Tn * Ckv + g * hd;
        T* dvh = dv + (long)b * Tn * Ckv + g * hd;
        for (int h = g * group; h < (g + 1) * group; h++) {
          const T* qh = q + (long)b * Tn * C + h * hd;
          const T* doh = dout + (long)b * Tn * C + h * hd;
          T* dqh = dq + (long)b * Tn * C + h * hd;
          const T* P = att + ((long)b * n_heads + h) * Tn * Tn;
          // dV += P^T dO ; dP = dO V^T
          train_gemm(false, CblasTrans, CblasNoTrans, Tn, hd, Tn, T(1), P, Tn, doh, C, T(1), dvh, Ckv);
          train_gemm(false, CblasNoTrans, CblasTrans, Tn, Tn, hd, T(1), doh, C, vh, Ckv, T(0), dS.data(), Tn);
          // Softmax backward: dS = P * (dP - rowsum(P * dP)). Masked P are 0, so dS is too.
          for (int i = 0; i < Tn; i++) {
            const T* p = P + (long)i * Tn;
            T* d = dS.data() + (long)i * Tn;
            T dot = 0;
            for (int j = 0; j <= i; j++) dot += p[j] * d[j];
            for (int j = 0; j <= i; j++) d[j] = p[j] * (d[j] - dot);
            for (int j = i + 1; j < Tn; j++) d[j] = 0;
          }
          // dQ += scale dS K ; dK += scale dS^T Q
          train_gemm(false, CblasNoTrans, CblasNoTrans, Tn, hd, Tn, scale, dS.data(), Tn, kh, Ckv, T(1), dqh, C);
          train_gemm(false, CblasTrans, CblasNoTrans, Tn, hd, Tn, scale, dS.data(), Tn, qh, C, T(1), dkh, Ckv);
        }
      }
  }
}

// One head, query rows [i0, i0 + nb) of one sequence: two GEMMs (scores against every key the
// block's last row sees, then probabilities times values), so a prefill runs at GEMM speed instead
// of a matrix-vector product per row. Keys past a row's own position get probability 0.
// sc holds nb * (start + i0 + nb) floats.
static void attend_block(const AttnSeq& a, int h, int i0, int nb, int n_heads, int n_kv, int hd, float* sc) {
  const int C = n_heads * hd, Ckv = n_kv * hd, group = n_heads / n_kv;
  const float scale = 1.0f / std::sqrt((float)hd);
  const int L = a.start + i0 + nb;  // keys the block's last row attends to
  // The f32 cache's pointers only when there is one: a bf16 cache leaves k and v null, and an
  // offset from null is undefined even unused (UBSan in the sanitizer build).
  const float* kh = a.kv.kh ? nullptr : a.kv.k + (h / group) * hd;
  const float* vh = a.kv.kh ? nullptr : a.kv.v + (h / group) * hd;
  int ldkv = Ckv;
  if (a.kv.kh) {  // bf16 cache: this head's keys and values widened once for the two GEMMs
    thread_local std::vector<float> wide;
    if (wide.size() < size_t(2) * L * hd) wide.resize(size_t(2) * L * hd);
    for (int j = 0; j < L; j++) {
      const size_t src = size_t(j) * Ckv + (h / group) * hd;
      for (int d = 0; d < hd; d++) {
        wide[size_t(j) * hd + d] = bf16_to_f32(a.kv.kh[src + d]);
        wide[size_t(L + j) * hd + d] = bf16_to_f32(a.kv.vh[src + d]);
      }
    }
    kh = wide.data();
    vh = wide.data() + size_t(L) * hd;
    ldkv = hd;
  }
  const float* qb = a.q + (long)i0 * C + h * hd;
  float* ob = a.out + (long)i0 * C + h * hd;
  if (nb == 1)
    cblas_sgemv(CblasRowMajor, CblasNoTrans, L, hd, scale, kh, ldkv, qb, 1, 0.0f, sc, 1);
  else
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, L, hd, scale, qb, C, kh, ldkv, 0.0f, sc, L);
  for (int i = 0; i < nb; i++) {
    float* s = sc + (long)i * L;
    const int Li = a.start + i0 + i + 1;
    softmax_inplace(s, Li);
    std::fill(s + Li, s + L, 0.0f);
  }
  if (nb == 1)
    cblas_sgemv(CblasRowMajor, CblasTrans, L, hd, 1.0f, vh, ldkv, sc, 1, 0.0f, ob, 1);
  else
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, hd, L, 1.0f, sc, L, vh, ldkv, 0.0f, ob, C);
}

void attention_cached_batch(const AttnSeq* seqs, int count, int n_heads, int n_kv, int hd) {
  check_heads(n_heads, n_kv);
  constexpr int kRows = 64;  // query rows per block
  // A task is one head of one block of query rows, or (h = -1) heads [i0, nb) of a one-row
  // sequence: a decode step reads its KV cache once for all those heads (attend_one). With fewer
  // decode rows than threads, their heads are split so every thread gets some (a long context at
  // batch 1 would otherwise run on one thread).
  struct Block { int seq, i0, nb, h; };
  thread_local std::vector<Block> blocks;  // the caller's list (reused, no allocation per call)
  blocks.clear();
  long work = 0;
  size_t need = 0;
  // Head-major for multi-row blocks, so each thread gets whole heads: blocks later in a sequence
  // see more keys and would unbalance a block-major split. Dynamic scheduling absorbs uneven
  // context lengths.
  for (int h = 0; h < n_heads; h++)
    for (int s = 0; s < count; s++)
      for (int i0 = 0; seqs[s].n > 1 && i0 < seqs[s].n; i0 += kRows)
        blocks.push_back({s, i0, std::min(kRows, seqs[s].n - i0), h});
  int decode_rows = 0;
  for (int s = 0; s < count; s++) decode_rows += seqs[s].n == 1;
  const int threads = omp_get_max_threads();
  const int parts = decode_rows == 0 ? 1 : std::clamp((threads + decode_rows - 1) / decode_rows, 1, n_heads);
  for (int s = 0; s < count; s++) {
    const AttnSeq& a = seqs[s];
    if (a.n == 1)
      for (int p = 0; p < parts; p++) blocks.push_back({s, n_heads * p / parts, n_heads * (p + 1) / parts, -1});
    work += (long)n_heads * a.n * (a.start + a.n) * hd;
    need = std::max(need, size_t(a.n == 1 ? n_heads : std::min(a.n, kRows)) * (a.start + a.n));
  }
  // (thread_local names inside the region would be each thread's own: take pointer and count here)
  const Block* bl = blocks.data();
  const int tasks = int(blocks.size());
#pragma omp parallel if (work > 65536)
  {
    thread_local std::vector<float> sc;
    if (sc.size() < need) sc.resize(need);
#pragma omp for schedule(dynamic)
    for (int t = 0; t < tasks; t++) {
      const Block& b = bl[t];
      const AttnSeq& a = seqs[b.seq];
      if (b.h < 0)
        attend_one(a.out, a.q, a.kv, a.start + 1, n_heads, n_kv, hd, sc.data(), b.i0, b.nb);
      else
        attend_block(a, b.h, b.i0, b.nb, n_heads, n_kv, hd, sc.data());
    }
  }
}

void attention_cached(float* out, const float* q, const float* kcache, const float* vcache, int start, int n,
                      int n_heads, int n_kv, int hd, float* /*scratch*/) {
  const AttnSeq a{out, q, {kcache, vcache, nullptr, nullptr}, start, n};
  attention_cached_batch(&a, 1, n_heads, n_kv, hd);
}

template void attention_forward<float>(float*, float*, const float*, const float*, const float*, int, int, int, int,
                                       int);
template void attention_forward<double>(double*, double*, const double*, const double*, const double*, int, int, int,
                                        int, int);
template void attention_backward<float>(float*, float*, float*, const float*, const float*, const float*,
                                        const float*, const float*, int, int, int, int, int);
template void attention_backward<double>(double*, double*, double*, const double*, const double*, const double*,
                                         const double*, const double*, int, int, int, int, int);

}  // namespace sky
