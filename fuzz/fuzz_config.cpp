// config.json: parse (bounded nesting), ModelConfig::from_hf_json (which validates), then what
// every command does with a config. Expected: a config, or sky::Error.
// Findings besides crashes and sanitizer reports (a UBSan overflow in a parameter count counts):
// an accepted config that does not survive to_hf_json -> from_hf_json (a checkpoint of it would
// not load, or would load as another model).
#include <cstdint>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "fuzz_util.h"
#include "io/json_input.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* text = reinterpret_cast<const char*>(data);
  sky::ModelConfig c;
  try {
    c = sky::ModelConfig::from_hf_json(sky::parse_json(text, text + size, "config.json"), "config.json");
  } catch (const sky::Error&) {
    return 0;
  }
  (void)c.param_count();
  (void)c.active_param_count();
  (void)c.ffn_summary();
  sky::ModelConfig back;
  try {
    back = sky::ModelConfig::from_hf_json(c.to_hf_json(), "saved config");
  } catch (const sky::Error& e) {
    FUZZ_CHECK(false, "an accepted config does not load once saved: %s", e.what());
  }
  FUZZ_CHECK(back.num_layers == c.num_layers && back.param_count() == c.param_count() &&
                 back.active_param_count() == c.active_param_count() && back.ffn_summary() == c.ffn_summary(),
             "saved config differs: %s vs %s", back.ffn_summary().c_str(), c.ffn_summary().c_str());
  for (int l = 0; l < c.num_layers; l++)
    FUZZ_CHECK(back.ffn_kind(l) == c.ffn_kind(l) && back.ffn_width(l) == c.ffn_width(l), "layer %d differs once saved", l);
  FUZZ_CHECK(back.to_hf_json() == c.to_hf_json(), "saving twice gives different JSON");
  return 0;
}
