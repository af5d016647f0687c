#include "io/trainer_state.h"

#include <fmt/format.h>

#include <climits>
#include <cmath>
#include <limits>

#include "core/error.h"

namespace sky {

// A primitive as JSON text, anything else by its type: never a dump of a large or deep value.
static std::string describe(const nlohmann::json& v) { return v.is_primitive() ? v.dump() : v.type_name(); }

TrainerState parse_trainer_state(const nlohmann::json& st, size_t num_alpha, size_t num_experts) {
  SKY_CHECK(st.is_object(), "not a JSON object");
  TrainerState s;
  try {  // at() and get<>() throw JSON exceptions for missing or mistyped fields; they become sky::Error
    const nlohmann::json& js = st.at("step");
    SKY_CHECK(js.is_number_integer() && js.get<int64_t>() >= 0, "'step' must be a non-negative integer, got {}",
              describe(js));
    s.step = js.get<int64_t>();
    s.data = st.at("data").get<DataPosition>();
    s.alpha = st.at("alpha").get<std::vector<double>>();
  } catch (const nlohmann::json::exception& e) {
    fail("{}", e.what());
  }
  SKY_CHECK(s.alpha.size() == num_alpha, "'alpha' holds {} values, expected {} (one per layer of an MoE model)",
            s.alpha.size(), num_alpha);
  for (double v : s.alpha) SKY_CHECK(std::isfinite(v) && v >= 0, "'alpha' holds {}", v);
  // Checked value by value before any conversion: a double past float's range would be undefined.
  if (auto it = st.find("select_bias"); it != st.end() && !it->is_null()) {
    SKY_CHECK(it->is_array() && it->size() == num_alpha,
              "'select_bias' must be a list of {} per-layer lists (one per layer of an MoE model), got {}", num_alpha,
              it->is_array() ? fmt::format("{} entries", it->size()) : describe(*it));
    for (size_t l = 0; l < num_alpha; l++) {
      const nlohmann::json& row = (*it)[l];
      SKY_CHECK(row.is_array() && row.size() == num_experts,
                "'select_bias'[{}] must be a list of {} numbers (one per expert), got {}", l, num_experts,
                row.is_array() ? fmt::format("{} entries", row.size()) : describe(row));
      std::vector<float> b;
      for (const nlohmann::json& v : row) {
        SKY_CHECK(v.is_number() && std::isfinite(v.get<double>()) &&
                      std::fabs(v.get<double>()) <= double(std::numeric_limits<float>::max()),
                  "'select_bias'[{}] holds {}", l, describe(v));
        b.push_back(float(v.get<double>()));
      }
      s.select_bias.push_back(std::move(b));
    }
  }
  return s;
}

RunShape parse_run_shape(const nlohmann::json& st) {
  SKY_CHECK(st.is_object(), "not a JSON object");
  RunShape r;
  auto sig = st.find("signature");
  if (sig == st.end()) return r;
  SKY_CHECK(sig->is_object(), "'signature' must be an object, got {}", describe(*sig));
  // Checked here, not converted with get<int>(): 1e300 or 2^32 + 8 would be undefined or wrap.
  auto count = [&](const char* key, std::optional<int>& out) {
    auto it = sig->find(key);
    if (it == sig->end()) return;
    SKY_CHECK(it->is_number_integer() && it->get<int64_t>() > 0 && it->get<int64_t>() <= INT_MAX,
              "signature.{} must be a positive integer, got {}", key, describe(*it));
    out = int(it->get<int64_t>());
  };
  count("seq_len", r.seq_len);
  count("batch_size", r.batch_size);
  count("grad_accum", r.grad_accum);
  if (auto it = sig->find("data_order"); it != sig->end()) {
    SKY_CHECK(it->is_string(), "signature.data_order must be a string, got {}", describe(*it));
    r.data_order = it->get<std::string>();
  }
  return r;
}

}  // namespace sky
