#pragma once
// The data-movement ops the MoE block runs in float and in double (backend.h's double overloads):
// a backend writes each once, as a static member template of `Ops` (gather_rows, combine,
// combine_backward, unpermute_add, router, router_backward), and derives from TypedOps<Ops>, which gives both overloads.
#include "backend/backend.h"

namespace sky {

template <class Ops>
class TypedOps : public Backend {
 public:
  void gather_rows(float* out, const float* in, const int32_t* rows, long R, int H) override {
    Ops::gather_rows(out, in, rows, R, H);
  }
  void gather_rows(double* out, const double* in, const int32_t* rows, long R, int H) override {
    Ops::gather_rows(out, in, rows, R, H);
  }
  void combine(float* out, const float* y, const int32_t* sel, const float* w, long N, int k, int H) override {
    Ops::combine(out, y, sel, w, N, k, H);
  }
  void combine(double* out, const double* y, const int32_t* sel, const double* w, long N, int k, int H) override {
    Ops::combine(out, y, sel, w, N, k, H);
  }
  void combine_backward(float* dy, float* dw, const float* dout, const float* y, const int32_t* sel, const float* w,
                        long N, int k, int H) override {
    Ops::combine_backward(dy, dw, dout, y, sel, w, N, k, H);
  }
  void combine_backward(double* dy, double* dw, const double* dout, const double* y, const int32_t* sel,
                        const double* w, long N, int k, int H) override {
    Ops::combine_backward(dy, dw, dout, y, sel, w, N, k, H);
  }
  void unpermute_add(float* dx, const float* drows, const int32_t* sel, long N, int k, int H) override {
    Ops::unpermute_add(dx, drows, sel, N, k, H);
  }
  void unpermute_add(double* dx, const double* drows, const int32_t* sel, long N, int k, int H) override {
    Ops::unpermute_add(dx, drows, sel, N, k, H);
  }
  void router(float* probs, int32_t* idx, float* w, const float* logits, int N, const RouterOptions& o,
              const float* select_bias) override {
    Ops::router(probs, idx, w, logits, N, o, select_bias);
  }
  void router(double* probs, int32_t* idx, double* w, const double* logits, int N, const RouterOptions& o,
              const double* select_bias) override {
    Ops::router(probs, idx, w, logits, N, o, select_bias);
  }
  void router_backward(float* dlogits, const float* dprobs, const float* dw, const float* logits, const float* probs,
                       const int32_t* idx, int N, const RouterOptions& o) override {
    Ops::router_backward(dlogits, dprobs, dw, logits, probs, idx, N, o);
  }
  void router_backward(double* dlogits, const double* dprobs, const double* dw, const double* logits,
                       const double* probs, const int32_t* idx, int N, const RouterOptions& o) override {
    Ops::router_backward(dlogits, dprobs, dw, logits, probs, idx, N, o);
  }
};

}  // namespace sky
