#pragma once
// The one MoE block, for training, eval and the engine: router -> dispatch -> experts (SwiGLU,
// expert(x) = w2(silu(w1 x) * w3 x)) -> weighted combine. Dropped assignments contribute nothing
// (the token keeps its residual path). The token dispatcher has three variants (MoeParallel):
// local (every expert here), held experts (this rank computes experts [e_begin, +held) of the
// tokens it holds; a group sums the partial outputs: TP/EDP training, TP/EP inference) and
// all-to-all (tokens travel to the experts' owners: EP/ETP training).
#include <cstdint>
#include <functional>
#include <vector>

#include "backend/backend.h"
#include "core/weight.h"
#include "moe/aux_loss.h"
#include "moe/dispatch.h"

namespace sky {

class Communicator;

// How one rank takes part in an MoE layer whose experts are spread over several ranks (DESIGN.md
// section 4). Every rank routes all of its tokens (the router is replicated); then it sends the
// routed rows of its token share to the ranks owning their experts, computes the rows it receives
// with the experts (or blocks of experts) it holds, and gets the outputs back. Ranks holding the same
// tokens (a tensor-parallel group) add up their partial outputs. The default does everything locally.
struct MoeParallel {
  Communicator* exchange = nullptr;  // all-to-all group to the experts' owners (null: no exchange)
  std::vector<int> owner;            // [E]: rank in `exchange` holding expert e (non-decreasing in e)
  Communicator* partial = nullptr;   // group whose partial outputs add up (null: none)
  int share_index = 0, share_count = 1;  // this rank dispatches token slice share_index of share_count
  bool active() const { return exchange || partial || share_count > 1; }
};

struct MoeOptions {
  RouterOptions router;
  double capacity_factor = 0.0;  // <= 0: dropless
  DropPolicy policy = DropPolicy::Prob;
  AuxLossType aux = AuxLossType::Skywork;
  // Data parallelism: adds up the router statistics of all ranks sharing the micro-batch (an
  // all-reduce), so aux loss and z-loss are those of the global batch. Empty: this process only.
  std::function<void(double*, size_t)> reduce_stats;
  MoeParallel par;
};

template <class T>
struct MoeWeights {
  int H = 0, I = 0, E = 0;   // I: width of the expert blocks held; E: experts the router scores
  int e_begin = 0, e_count = -1;  // experts held: [e_begin, e_begin + e_count) (-1: all E)
  int held() const { return e_count < 0 ? E : e_count; }
  const T* router = nullptr;  // [E, H]
  const T* w1 = nullptr;      // [held, I, H] gate projections, expert e at w1 + (e - e_begin)*I*H
  const T* w3 = nullptr;      // [E, I, H] up projections
  const T* w2 = nullptr;      // [E, H, I] down projections
  // Inference: typed weights (f32, bf16, fp8) of the held experts, [held] each; when set they are
  // used instead of w1/w3/w2 (float only; one grouped call, no activations kept for backward).
  const QWeight* const* q1 = nullptr;
  const QWeight* const* q3 = nullptr;
  const QWeight* const* q2 = nullptr;
  // [E] (null: none): added to the router's scores for the top-k selection only (Backend::router):
  // DeepSeek-V3's e_score_correction_bias, or the bias auxiliary-loss-free balancing trains
  // (moe/balance.h). Gate weights and every gradient stay those of the unbiased scores.
  const T* select_bias = nullptr;
};

template <class T>
struct MoeGrads {  // accumulated (+=); any may be null to skip
  T* router = nullptr;
  T* w1 = nullptr;
  T* w3 = nullptr;
  T* w2 = nullptr;
};

// What the forward pass saves for backward and reports. Buffers are resized in place, so after the
// first step of a given shape no allocation happens.
template <class T>
struct MoeCache {
  std::vector<T> logits, probs, topk_w;  // [N,E], [N,E], [N,k]
  std::vector<int32_t> topk_idx;         // [N,k]
  Dispatch disp;
  // This rank's routed rows (its token share; without an exchange only rows of experts it holds):
  std::vector<int32_t> sel;              // [S]: routed row of each selected row
  std::vector<int32_t> sel_of_row;       // [R]: index into sel, -1 when not selected
  std::vector<int32_t> sel_token;        // [S]: token of each selected row
  std::vector<int32_t> slot_sel;         // [N,k]: selected row of each (token, slot), -1 if none
  std::vector<T> xg, y;                  // [S,H]: inputs and (returned) expert outputs of the selected rows
  // The rows computed here, grouped by held expert (the selected rows themselves without an exchange):
  std::vector<int32_t> held_offsets;     // [held+1]
  std::vector<size_t> send_counts, recv_counts;  // exchange: floats per rank, for H-wide rows
  std::vector<int32_t> perm;             // exchange: expert-major row i is received row perm[i]
  std::vector<T> xr, yr;                 // exchange: received inputs and their outputs [Rr,H]
  std::vector<T> h1, h3, act;            // per computed row: w1 x, w3 x, swiglu [Rr,I]
  RouterStats stats;                     // of the global batch (after reduce_stats)
  double aux_loss = 0.0;                 // of the chosen type (0 when None)
  double z_loss = 0.0;
  double entropy = 0.0;                  // mean router entropy (nats) over tokens
  // Backward scratch (mutable: moe_backward takes the cache const but reuses these buffers across steps).
  mutable std::vector<T> d_rows;                  // [S,H]: gradient of y, then reused for the gradient of xg
  mutable std::vector<T> d_recv, d_sum;           // exchange: gradients of the computed rows; partial: [N,H]
  mutable std::vector<T> dact, dh1, dh3;          // [R,I]
  mutable std::vector<T> dtopk_w, dprobs, dlogits;  // [N,k], [N,E], [N,E]
};

// out [N, H] = MoE(x [N, H]) (overwrites out).
template <class T>
void moe_forward(Backend& be, T* out, const T* x, int N, const MoeWeights<T>& w, const MoeOptions& o,
                 MoeCache<T>& cache);

// dx [N, H] += ..., grads += ... for loss = <dout, out> + aux_coef * aux_loss + z_coef * z_loss.
template <class T>
void moe_backward(Backend& be, T* dx, const MoeGrads<T>& g, const T* dout, const T* x, int N, const MoeWeights<T>& w,
                  const MoeOptions& o, const MoeCache<T>& cache, double aux_coef, double z_coef);

}  // namespace sky
