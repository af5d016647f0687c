#pragma once
// The compute seam. Model code (the decoder, the MoE block, the trainer, the engine) calls these
// ops and nothing else for numeric work; each backend implements all of them:
//   backend/cpu  the fast kernels (OpenMP, OpenBLAS, Highway, AVX512-BF16) -- nothing outside that
//                folder includes those libraries (tests/test_backend_ops.cpp checks it);
//   backend/ref  plain loops with double accumulation: the yardstick every backend is tested
//                against (tests/test_backend_ops.cpp), and proof that the seam is complete (the
//                whole model trains, evaluates, generates and serves on it: --device ref).
//
// Contracts, shared by every op unless it says otherwise:
// - Flat row-major buffers in host memory; weights in the Hugging Face layout [out, in].
// - A forward op writes (=) its outputs; its backward, declared beside it, accumulates (+=) into
//   every gradient it produces, so residual branches and micro-batch accumulation need no copies.
// - Ops the MoE block runs in float64 for finite-difference tests also have double overloads.
// - Results may differ between backends by rounding only (the op harness bounds how much).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/rope_table.h"
#include "core/weight.h"

namespace sky {

// A KV cache of one sequence and layer, [position][n_kv * head_dim]: f32 (k, v) or bf16 (kh, vh;
// the other pair null).
struct KvView {
  const float* k = nullptr;
  const float* v = nullptr;
  const uint16_t* kh = nullptr;
  const uint16_t* vh = nullptr;
};

// n new query rows of one sequence at positions start..start+n-1, against its KV cache, which
// already holds positions 0..start+n-1. Row i attends to positions 0..start+i.
struct AttnSeq {
  float* out;
  const float* q;
  KvView kv;
  int start, n;
};

// One product of a linear_multi call: y = x W^T.
struct LinearOut {
  float* y;
  const QWeight* w;
};

// The MoE router after the gate matmul (DESIGN.md section 2): optional gating logit normalization
// (Skywork eq. 6, unbiased std), scores (softmax, or per-expert sigmoid as DeepSeek-V3), top-k,
// top-k weights renormalized (or not: Qwen2-MoE, OLMoE, DeepSeek-V2 leave them as scores) and
// multiplied by a routed scaling factor.
struct RouterOptions {
  int num_experts = 0;
  int top_k = 2;
  bool logits_norm = false;
  double lambda = 1.0;       // moe_gate_norm_std
  bool sigmoid = false;      // scores = sigmoid(z~) per expert (else softmax over the experts)
  bool renormalize = true;   // top-k weights = scores / their sum (norm_topk_prob)
  double scale = 1.0;        // routed_scaling_factor, applied to the top-k weights
};

// Precision of the float matmuls of training (forward and backward). BF16 rounds both operands to
// bf16 and sums in f32 (weights, gradients and optimizer state stay f32).
enum class MatmulPrecision { F32, BF16 };

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;  // the --device value: "cpu", "ref"
  // What runs underneath, for logs and benchmarks (e.g. "cpu (AVX3_ZEN4, 2 threads)").
  virtual std::string describe() const = 0;

  // ---- set-up
  virtual void set_threads(int n) = 0;  // n <= 0: the backend's default
  virtual int num_threads() const = 0;
  // Training matmul precision; a backend that cannot run `p` throws naming it.
  virtual void set_matmul_precision(MatmulPrecision p) = 0;
  virtual MatmulPrecision matmul_precision() const = 0;
  // Read bandwidth of the backend's memory (GB/s) over `bytes`, best of `reps`: the roofline that
  // memory-bound benchmarks quote beside their figures.
  virtual double memory_bandwidth_gbs(size_t bytes, int reps) = 0;
  // Step boundaries (an engine forward, a training step; `rows` sizes it), so a backend can adapt
  // to the machine it finds between steps: the CPU backend shrinks its team while another process
  // holds one of its cores. The team size never changes a result (training's products are blocked
  // by shape, not by thread). Use StepScope.
  virtual void step_begin(int rows) {}
  virtual void step_end() {}

  // ---- elementwise and data movement
  virtual void zero(float* p, size_t n) = 0;
  virtual void add(float* y, const float* x, size_t n) = 0;  // y += x
  virtual void scale(float* p, size_t n, float s) = 0;       // p *= s
  // Sum of squares in double, summed in an order that does not depend on the thread count.
  virtual double sum_squares(const float* p, size_t n) = 0;
  // y[n, :] += b (a bias over N rows of D); backward: db += sum over n of dy[n, :].
  virtual void add_bias(float* y, const float* b, int N, int D) = 0;
  virtual void bias_backward(float* db, const float* dy, int N, int D) = 0;
  // y[n, :] += sigmoid(g[n]) * x[n, :] (Qwen2-MoE's gated shared expert). Backward writes
  // dx[n, :] = sigmoid(g[n]) * dy[n, :] and dg[n] = sigmoid'(g[n]) * dot(dy[n, :], x[n, :]).
  virtual void gated_add(float* y, const float* x, const float* g, int N, int H) = 0;
  virtual void gated_add_backward(float* dx, float* dg, const float* dy, const float* x, const float* g, int N,
                                  int H) = 0;
  // Permute by expert: out[r, :] = in[rows[r], :] for r < R.
  virtual void gather_rows(float* out, const float* in, const int32_t* rows, long R, int H) = 0;
  virtual void gather_rows(double* out, const double* in, const int32_t* rows, long R, int H) = 0;
  // Unpermute and combine: out[n, :] = sum_s w[n, s] * y[sel[n, s], :] over the k slots of token n
  // (sel < 0: no contribution, e.g. a dropped assignment or an expert another rank computes).
  virtual void combine(float* out, const float* y, const int32_t* sel, const float* w, long N, int k, int H) = 0;
  virtual void combine(double* out, const double* y, const int32_t* sel, const double* w, long N, int k, int H) = 0;
  // Its backward: dy[sel[n, s], :] = w[n, s] * dout[n, :] (written), dw[n, s] = <dout[n], y[sel]>
  // (written; 0 where sel < 0).
  virtual void combine_backward(float* dy, float* dw, const float* dout, const float* y, const int32_t* sel,
                                const float* w, long N, int k, int H) = 0;
  virtual void combine_backward(double* dy, double* dw, const double* dout, const double* y, const int32_t* sel,
                                const double* w, long N, int k, int H) = 0;
  // Backward of the permute: dx[n, :] += sum_s drows[sel[n, s], :] (sel < 0 skipped).
  virtual void unpermute_add(float* dx, const float* drows, const int32_t* sel, long N, int k, int H) = 0;
  virtual void unpermute_add(double* dx, const double* drows, const int32_t* sel, long N, int k, int H) = 0;
  // The router, in fp32 (double overload for the tests) whatever the weights' dtype: logits [N, E] ->
  // probs [N, E] (the scores), topk_idx [N, k] by descending score (ties: the lower expert first),
  // topk_w [N, k] = scale * g_j / (sum of the selected g) (scale * g_j without renormalization).
  // select_bias [E] (may be null): a per-expert bias for the selection only -- the top k are those
  // of g_j + b_j (summed in double; ties: the lower expert), while probs and topk_w stay those of
  // the unbiased scores g. It is DeepSeek-V3's `e_score_correction_bias` and the bias of
  // auxiliary-loss-free load balancing (moe/balance.h). The backward is the same with or without
  // it: given topk_idx, the bias does not enter any output that has a gradient.
  virtual void router(float* probs, int32_t* topk_idx, float* topk_w, const float* logits, int N,
                      const RouterOptions& o, const float* select_bias = nullptr) = 0;
  virtual void router(double* probs, int32_t* topk_idx, double* topk_w, const double* logits, int N,
                      const RouterOptions& o, const double* select_bias = nullptr) = 0;
  // dlogits [N, E] += the gradient from dprobs [N, E] (reaching the scores directly: the aux loss)
  // and dtopk_w [N, k]; either may be null. The logit normalization's mean and std are differentiated.
  virtual void router_backward(float* dlogits, const float* dprobs, const float* dtopk_w, const float* logits,
                               const float* probs, const int32_t* topk_idx, int N, const RouterOptions& o) = 0;
  virtual void router_backward(double* dlogits, const double* dprobs, const double* dtopk_w, const double* logits,
                               const double* probs, const int32_t* topk_idx, int N, const RouterOptions& o) = 0;

  // ---- linear layers
  // y[N, O] = x[N, I] w[O, I]^T over f32 weights (training). `exact`: always full f32, whatever
  // the training precision (the router: its logits pick the experts).
  virtual void matmul(float* y, const float* x, const float* w, int N, int I, int O, bool exact = false) = 0;
  virtual void matmul(double* y, const double* x, const double* w, int N, int I, int O, bool exact = false) = 0;
  // dx[N, I] += dy w; dw[O, I] += dy^T x. Either gradient may be null (skipped).
  virtual void matmul_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int N, int I,
                               int O, bool exact = false) = 0;
  virtual void matmul_backward(double* dx, double* dw, const double* dy, const double* x, const double* w, int N,
                               int I, int O, bool exact = false) = 0;
  // y[N, O] = x[N, I] W^T over a typed weight (f32, bf16, fp8 with scales): the decoder's linear
  // layers, training's (f32 views of the master weights: then the result is matmul's, at the training
  // precision, within rounding) and the engine's.
  virtual void linear(float* y, const float* x, const QWeight& w, int N) = 0;
  // Several products of the same x (the q, k and v projections) in one call.
  virtual void linear_multi(const float* x, int N, const LinearOut* outs, int count) = 0;
  // Grouped SwiGLU experts, one call for all experts of a layer: for each expert e with rows
  // [offsets[e], offsets[e+1]) of xg [R, H], y = w2[e](silu(w1[e] x) * w3[e] x) into y [R, H].
  // h1, h3 [R, I]: scratch (h1 ends holding the SwiGLU). w1/w3/w2[e] may be null for an expert
  // without rows.
  virtual void grouped_swiglu(float* y, float* h1, float* h3, const float* xg, const int32_t* offsets, int E,
                              const QWeight* const* w1, const QWeight* const* w3, const QWeight* const* w2, int H,
                              int I) = 0;

  // ---- norms, positions, activations, embedding
  // out[n, :] = in[n, :] * rstd[n] * w, rstd[n] = 1 / sqrt(mean(in[n, :]^2) + eps); rstd may be null.
  virtual void rmsnorm(float* out, float* rstd, const float* in, const float* w, int N, int H, double eps) = 0;
  virtual void rmsnorm_backward(float* din, float* dw, const float* dout, const float* in, const float* w,
                                const float* rstd, int N, int H) = 0;
  // x [N, heads * head_dim] rotated in place by the angles of positions pos[n].
  virtual void rope(float* x, const int32_t* pos, int N, int heads, const RopeTable& t) = 0;
  virtual void rope_backward(float* dx, const int32_t* pos, int N, int heads, const RopeTable& t) = 0;
  // out[i] = silu(gate[i]) * up[i]; out may alias gate.
  virtual void swiglu(float* out, const float* gate, const float* up, long n) = 0;
  virtual void swiglu(double* out, const double* gate, const double* up, long n) = 0;
  virtual void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                               long n) = 0;
  virtual void swiglu_backward(double* dgate, double* dup, const double* dout, const double* gate,
                               const double* up, long n) = 0;
  // out[n, :] = table[tokens[n], :]; backward: dtable[tokens[n], :] += dout[n, :].
  virtual void embedding(float* out, const int32_t* tokens, const float* table, int N, int H) = 0;
  virtual void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int N, int H) = 0;

  // ---- attention (causal, grouped KV heads: query head h reads KV head h / (heads / kv_heads))
  // Training and eval over B sequences of T rows from position 0: q, out [B, T, heads * hd]; k, v
  // [B, T, kv * hd]; att [B, heads, T, T] receives the probabilities backward needs.
  virtual void attention(float* out, float* att, const float* q, const float* k, const float* v, int B, int T,
                         int heads, int kv, int hd) = 0;
  virtual void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                                  const float* v, const float* att, int B, int T, int heads, int kv, int hd) = 0;
  // Prefill and decode rows of many sequences over their KV caches (inference; no backward).
  virtual void attention_kv(const AttnSeq* seqs, int count, int heads, int kv, int hd) = 0;

  // ---- loss and optimizer
  // losses[n] = logsumexp(logits[n]) - logits[n, targets[n]]; targets are valid ids.
  virtual void cross_entropy(float* losses, const float* logits, const int32_t* targets, int N, int V) = 0;
  // dlogits[n] += dloss[n] * (softmax(logits[n]) - onehot(targets[n])).
  virtual void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                                      const float* dloss, int N, int V) = 0;
  // AdamW (PyTorch's decoupled form) over p[0, n): g is read times grad_scale; m, v are updated;
  // p = p * shrink - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps).
  virtual void adamw(float* p, const float* g, float* m, float* v, size_t n, float b1, float b2, float eps,
                     float shrink, float step_size, float inv_sqrt_bc2, float grad_scale) = 0;
};

// The backends this build has, by --device name: "cpu" (default) and "ref". Anything else is an
// error that names the value and the choices. Backends are process-wide singletons.
Backend& backend(const std::string& device = "cpu");
std::vector<std::string> device_names();

// "f32" | "bf16" (for flags); anything else: error naming the value.
MatmulPrecision parse_matmul_precision(const std::string& s);

// Brackets one step: step_begin now, step_end on every way out (errors included).
class StepScope {
 public:
  StepScope(Backend& be, int rows) : be_(be) { be_.step_begin(rows); }
  ~StepScope() { be_.step_end(); }
  StepScope(const StepScope&) = delete;
  StepScope& operator=(const StepScope&) = delete;

 private:
  Backend& be_;
};

}  // namespace sky
