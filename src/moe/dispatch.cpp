#include "moe/dispatch.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace sky {

template <class T>
void make_dispatch_into(Dispatch& d, const int32_t* topk_idx, const T* probs, int N, int E, int k,
                        double capacity_factor, DropPolicy policy) {
  const long A = (long)N * k;  // assignments
  d.num_tokens = N;
  d.num_experts = E;
  d.top_k = k;
  d.capacity = 0;
  if (capacity_factor > 0) {
    // The epsilon keeps e.g. 1.1 * 10 / 11 = 1.0000000000000002 from rounding up to 2.
    double c = std::ceil(capacity_factor * N * k / E - 1e-9);
    d.capacity = std::max(1, (int)c);
  }

  d.load.assign(E, 0);
  for (long a = 0; a < A; a++) {
    int e = topk_idx[a];
    SKY_CHECK(e >= 0 && e < E, "dispatch: expert index {} out of range [0, {})", e, E);
    d.load[e]++;
  }
  // Bucket the assignments by expert, in token order. offsets[e+1] starts at expert e's first row and
  // serves as its write cursor, ending at the first row of expert e+1.
  d.offsets.assign(E + 1, 0);
  for (int e = 1; e < E; e++) d.offsets[e + 1] = d.offsets[e] + d.load[e - 1];
  d.row_token.resize(A);
  for (int n = 0; n < N; n++)
    for (int s = 0; s < k; s++) d.row_token[d.offsets[topk_idx[(long)n * k + s] + 1]++] = n;

  // Apply the capacity per expert and compact the kept rows to the front (they never move right).
  int32_t begin = 0, out = 0;
  for (int e = 0; e < E; e++) {
    int32_t end = d.offsets[e + 1];
    int32_t* r = d.row_token.data() + begin;
    int32_t cnt = end - begin, keep = cnt;
    if (d.capacity > 0 && cnt > d.capacity) {
      keep = d.capacity;
      if (policy == DropPolicy::Prob) {
        auto better = [&](int32_t a, int32_t b) {
          T pa = probs[(long)a * E + e], pb = probs[(long)b * E + e];
          return pa > pb || (pa == pb && a < b);
        };
        std::nth_element(r, r + keep, r + cnt, better);
        std::sort(r, r + keep);  // back to token order
      }
      // Position: rows are already in token order, so the first `keep` win.
    }
    for (int32_t i = 0; i < keep; i++) d.row_token[out + i] = r[i];
    out += keep;
    d.offsets[e + 1] = out;
    begin = end;
  }
  d.row_token.resize(out);
  d.dropped = A - out;

  d.row_slot.resize(out);
  d.kept.assign(A, 0);
  d.slot_row.assign(A, -1);
  for (int e = 0; e < E; e++)
    for (int32_t r = d.offsets[e]; r < d.offsets[e + 1]; r++) {
      long n = d.row_token[r];
      int s = 0;
      while (topk_idx[n * k + s] != e) s++;
      d.row_slot[r] = s;
      d.kept[n * k + s] = 1;
      d.slot_row[n * k + s] = r;
    }
}

template <class T>
Dispatch make_dispatch(const int32_t* topk_idx, const T* probs, int N, int E, int k, double capacity_factor,
                       DropPolicy policy) {
  Dispatch d;
  make_dispatch_into(d, topk_idx, probs, N, E, k, capacity_factor, policy);
  return d;
}

template void make_dispatch_into<float>(Dispatch&, const int32_t*, const float*, int, int, int, double, DropPolicy);
template void make_dispatch_into<double>(Dispatch&, const int32_t*, const double*, int, int, int, double,
                                         DropPolicy);
template Dispatch make_dispatch<float>(const int32_t*, const float*, int, int, int, double, DropPolicy);
template Dispatch make_dispatch<double>(const int32_t*, const double*, int, int, int, double, DropPolicy);

}  // namespace sky
