#include "ops/attention.h"

#include "ops/blas.h"
#include <omp.h>

#include <cmath>
#include <vector>

#include "core/error.h"

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
      gemm(CblasNoTrans, CblasTrans, Tn, Tn, hd, scale, qh, C, kh, Ckv, T(0), P, Tn);
      for (int i = 0; i < Tn; i++) {
        T* p = P + (long)i * Tn;
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
      gemm(CblasNoTrans, CblasNoTrans, Tn, hd, Tn, T(1), P, Tn, vh, Ckv, T(0), oh, C);
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
          gemm(CblasTrans, CblasNoTrans, Tn, hd, Tn, T(1), P, Tn, doh, C, T(1), dvh, Ckv);
          gemm(CblasNoTrans, CblasTrans, Tn, Tn, hd, T(1), doh, C, vh, Ckv, T(0), dS.data(), Tn);
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
          gemm(CblasNoTrans, CblasNoTrans, Tn, hd, Tn, scale, dS.data(), Tn, kh, Ckv, T(1), dqh, C);
          gemm(CblasTrans, CblasNoTrans, Tn, hd, Tn, scale, dS.data(), Tn, qh, C, T(1), dkh, Ckv);
        }
      }
  }
}

void attention_cached(float* out, const float* q, const float* kcache, const float* vcache, int start, int n,
                      int n_heads, int n_kv, int hd, float* scratch) {
  check_heads(n_heads, n_kv);
  int C = n_heads * hd, Ckv = n_kv * hd, group = n_heads / n_kv;
  float scale = 1.0f / std::sqrt((float)hd);
  long work = (long)n_heads * n * (start + n) * hd;
  // Heads are independent; thread 0 uses the caller's scratch, any other thread its own buffer,
  // so the scratch contract stays "start + n floats" whatever the thread count.
#pragma omp parallel if (work > 65536)
  {
    std::vector<float> own;
    float* s = scratch;
    if (omp_get_thread_num() != 0) {
      own.resize(start + n);
      s = own.data();
    }
#pragma omp for schedule(static)
    for (int h = 0; h < n_heads; h++) {
      const float* kh = kcache + (h / group) * hd;
      const float* vh = vcache + (h / group) * hd;
      for (int i = 0; i < n; i++) {
        const float* qi = q + (long)i * C + h * hd;
        float* oi = out + (long)i * C + h * hd;
        int L = start + i + 1;
        cblas_sgemv(CblasRowMajor, CblasNoTrans, L, hd, scale, kh, Ckv, qi, 1, 0.0f, s, 1);
        float mx = s[0];
        for (int j = 1; j < L; j++) mx = s[j] > mx ? s[j] : mx;
        float sum = 0;
        for (int j = 0; j < L; j++) {
          s[j] = std::exp(s[j] - mx);
          sum += s[j];
        }
        cblas_sgemv(CblasRowMajor, CblasTrans, L, hd, 1.0f / sum, vh, Ckv, s, 1, 0.0f, oi, 1);
      }
    }
  }
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
