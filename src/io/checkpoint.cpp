#include "io/checkpoint.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <stdio.h>

#include <algorithm>
#include <climits>
#include <limits>
#include <cmath>
#include <filesystem>
#include <cstring>
#include <fstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/json_input.h"
#include "io/safetensors.h"

namespace sky {

namespace fs = std::filesystem;

static Tensor flat_view(const float* p, size_t n) {
  Tensor t;
  t.dtype = DType::F32;
  t.shape = {int64_t(n)};
  t.data = const_cast<float*>(p);
  return t;
}

std::string save_checkpoint(const std::string& out_dir, int64_t step, const CheckpointData& d, int keep) {
  fs::create_directories(out_dir);
  const std::string name = fmt::format("step-{:08d}", step);
  const fs::path final_dir = fs::path(out_dir) / name;
  const fs::path tmp_dir = fs::path(out_dir) / (".tmp-" + name);
  fs::remove_all(tmp_dir);
  d.model->save(tmp_dir.string(), DType::F32, size_t(1) << 40);
  const size_t total = d.model->layout.total;
  write_safetensors((tmp_dir / "optimizer.safetensors").string(),
                    {{"adam.m", flat_view(d.adam_m, total)}, {"adam.v", flat_view(d.adam_v, total)}});
  write_text_atomic((tmp_dir / "trainer_state.json").string(), d.state.dump(2) + "\n");
  // The step's name holds a complete checkpoint at every moment: an existing one (a re-save) is
  // swapped with the new one in one atomic exchange and only then removed.
  if (!fs::exists(final_dir)) {
    fs::rename(tmp_dir, final_dir);
  } else if (::renameat2(AT_FDCWD, tmp_dir.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
    fs::remove_all(tmp_dir);
  } else {  // a filesystem without the exchange: the old one moves aside first (a crash leaves it there)
    const fs::path old_dir = fs::path(out_dir) / (".old-" + name);
    fs::remove_all(old_dir);
    fs::rename(final_dir, old_dir);
    fs::rename(tmp_dir, final_dir);
    fs::remove_all(old_dir);
  }
  write_text_atomic((fs::path(out_dir) / "latest").string(), name + "\n");
  if (keep > 0) {
    std::vector<std::string> steps;
    for (auto& e : fs::directory_iterator(out_dir)) {
      std::string n = e.path().filename().string();
      if (e.is_directory() && n.rfind("step-", 0) == 0) steps.push_back(n);
    }
    std::sort(steps.begin(), steps.end());
    for (size_t i = 0; i + keep < steps.size(); i++)
      if (steps[i] != name) fs::remove_all(fs::path(out_dir) / steps[i]);
  }
  return final_dir.string();
}

std::string resolve_checkpoint(const std::string& path) {
  std::error_code ec;
  SKY_CHECK(fs::is_directory(path, ec), "--resume: '{}' is not a directory", path);
  if (fs::exists(fs::path(path) / "trainer_state.json")) return path;
  fs::path latest = fs::path(path) / "latest";
  std::ifstream f(latest);
  SKY_CHECK(f.good(), "--resume: '{}' holds neither trainer_state.json nor a 'latest' file", path);
  std::string name;
  std::getline(f, name);
  // A checkpoint's own name, nothing that leads out of the run directory.
  SKY_CHECK(!name.empty() && name.find('/') == std::string::npos && name[0] != '.',
            "--resume: '{}' names '{}', not a checkpoint directory of this run", latest.string(), name);
  fs::path dir = fs::path(path) / name;
  SKY_CHECK(fs::exists(dir / "trainer_state.json"),
            "--resume: '{}' names checkpoint '{}', which is missing or incomplete", latest.string(), name);
  return dir.string();
}

nlohmann::json load_checkpoint_state(const std::string& dir, float* m, float* v, size_t total) {
  const std::string sp = (fs::path(dir) / "trainer_state.json").string();
  const nlohmann::json state = read_json_file(sp);
  SKY_CHECK(state.is_object(), "{}: not a JSON object", sp);
  SafetensorsReader r = SafetensorsReader::open((fs::path(dir) / "optimizer.safetensors").string());
  for (auto [name, dst] : {std::pair{"adam.m", m}, std::pair{"adam.v", v}}) {
    Tensor t = r.get_checked(name, {int64_t(total)});
    SKY_CHECK(t.dtype == DType::F32, "{}: '{}' must be F32", r.path(), name);
    std::memcpy(dst, t.data, total * sizeof(float));
  }
  return state;
}

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
