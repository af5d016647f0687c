// Flags and loading shared by the inference commands under mpirun (infer/tp.h).
#include <fmt/format.h>

#include "cli/commands.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "dist/mesh.h"

namespace sky::cli {

void add_tp_flags(CLI::App& app, TpFlags& f) {
  app.add_option("--tp", f.tp, "tensor-parallel ranks (run under mpirun -np N; default: N)")->check(positive_int());
  app.add_option("--tp-shares", f.shares, "per-rank shares of the heads and FFN/expert width, e.g. 4,5,5,5 "
                                          "(default: as even as possible; `skymoe plan --inference` suggests some)");
  app.add_option("--ep", f.ep, "expert-parallel groups: experts spread over EP groups of TP/EP ranks (EP = TP: whole "
                               "experts per rank; 1: every expert's width split)")
      ->capture_default_str()
      ->check(positive_int());
  app.add_option("--comm-timeout", f.comm_timeout, "seconds a collective may wait for another rank before the job stops")
      ->capture_default_str()
      ->check(positive_number());
}

static std::vector<int> parse_shares(const std::string& s) {
  if (s.empty()) return {};
  std::vector<int> v = parse_int_list(s, "--tp-shares");
  for (int x : v) SKY_CHECK(x > 0, "--tp-shares: '{}' is not a positive integer (expected e.g. 4,5,5,5)", x);
  return v;
}

Shard tp_setup(const ModelConfig& cfg, const TpFlags& f, bool rank0_throws, std::shared_ptr<TpGroup>& tp) {
  Communicator& world = world_comm();
  TpOptions o;
  o.tp = f.tp ? f.tp : world.size();
  o.shares = parse_shares(f.shares);
  o.ep = f.ep;
  SKY_CHECK(o.tp == world.size(), "--tp {} but {} processes were started (run `mpirun -np {} skymoe ...`)", o.tp,
            world.size(), o.tp);
  Shard s = tp_shard(cfg, o, world.rank());  // every rank checks, so a bad flag stops all of them
  if (o.tp > 1) {
    set_collective_timeout(f.comm_timeout, rank0_throws && world.rank() == 0);
    tp = std::make_shared<TpGroup>(world);
  }
  return s;
}

void add_kv_dtype_flag(CLI::App& app, std::string& kv_dtype) {
  app.add_option("--kv-dtype", kv_dtype, "KV cache: f32 | bf16 (half the memory and attention's reads)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
}

void add_device_flag(CLI::App& app, std::string& device) {
  app.add_option("--device", device,
                 "compute backend: cpu (the fast kernels) | ref (plain loops, double accumulation: the yardstick)")
      ->capture_default_str();
}

void add_lm_head_flag(CLI::App& app, std::string& lm_head) {
  app.add_option("--lm-head", lm_head,
                 "LM head in memory: auto (as stored; bf16 when converting to fp8) | f32 | bf16 | fp8 (fewer bytes "
                 "per decoded token, slightly less exact)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "f32", "bf16", "fp8"}));
}

InferModel load_infer_model(const std::string& dir, const InferLoadOptions& o, const TpFlags& f, bool rank0_throws) {
  std::shared_ptr<TpGroup> tp;
  Shard s = tp_setup(ModelConfig::load_file(dir), f, rank0_throws, tp);
  InferModel m = InferModel::load(dir, o, &s);
  m.tp = tp;
  return m;
}

}  // namespace sky::cli
