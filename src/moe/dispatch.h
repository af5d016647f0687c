#pragma once
// Token dispatch: groups the top-k assignments by expert and applies the capacity limit.
#include <cstdint>
#include <vector>

namespace sky {

enum class DropPolicy { Prob, Position };  // which assignments win a full expert's slots

struct Dispatch {
  int num_tokens = 0, num_experts = 0, top_k = 0;
  int capacity = 0;                 // per expert; 0 = dropless
  std::vector<int32_t> offsets;     // [E+1]: rows of expert e are [offsets[e], offsets[e+1])
  std::vector<int32_t> row_token;   // token index of each routed row (ascending within an expert)
  std::vector<int32_t> row_slot;    // top-k slot (0..k-1) of each routed row
  std::vector<uint8_t> kept;        // [N*k]: 1 when assignment (n, slot) was kept
  std::vector<int32_t> slot_row;    // [N*k]: routed row of assignment (n, slot), -1 when dropped
  std::vector<int32_t> load;        // [E]: assignments routed to expert e before dropping
  int64_t dropped = 0;
  double drop_rate() const { return num_tokens ? double(dropped) / (double(num_tokens) * top_k) : 0.0; }
};

// capacity = ceil(capacity_factor * N * k / E) when capacity_factor > 0, else dropless.
// Policy Prob keeps, per expert, the assignments with the highest router probability probs[n, e]
// (ties: earlier token); Position keeps the earliest tokens.
template <class T>
Dispatch make_dispatch(const int32_t* topk_idx, const T* probs, int N, int E, int k, double capacity_factor,
                       DropPolicy policy);
// Same, refilling d in place so a caller that keeps d around stops allocating after the first call.
template <class T>
void make_dispatch_into(Dispatch& d, const int32_t* topk_idx, const T* probs, int N, int E, int k,
                        double capacity_factor, DropPolicy policy);

}  // namespace sky
