#include "model_ref.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <string>

#include "model/params.h"
#include "ref.h"

namespace skytest {

using sky::ModelConfig;

namespace {

struct Ref {
  const ModelConfig& c;
  const std::vector<double>& p;
  const std::map<std::string, size_t>& off;
  Ref(const ModelConfig& c_, const std::vector<double>& p_) : c(c_), p(p_), off(offsets(c_)) {}
  const double* W(const std::string& name) const { return p.data() + off.at(name); }

  // Tensor name -> offset, built once per shape (finite-difference tests call ref_forward thousands of times).
  static const std::map<std::string, size_t>& offsets(const ModelConfig& c) {
    thread_local std::map<std::vector<int>, std::map<std::string, size_t>> cache;
    std::vector<int> key = {int(c.router_sigmoid), int(c.norm_topk_prob), c.vocab_size,         c.hidden_size,           c.num_layers,
                            c.num_heads,          c.num_kv_heads,          c.intermediate_size,
                            c.moe_intermediate_size, c.num_experts,        c.first_dense_layers,
                            c.moe_layer_step,     c.tie_word_embeddings};
    key.insert(key.end(), c.dense_layers.begin(), c.dense_layers.end());
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
    std::map<std::string, size_t> off;
    for (auto& s : sky::ParamLayout::build(c).specs) off[s.name] = s.offset;
    return cache.emplace(key, std::move(off)).first->second;
  }

  // y[o] = sum_i W[o, i] x[i]
  std::vector<double> linear(const double* w, const std::vector<double>& x, int O) const {
    std::vector<double> y(O, 0.0);
    const int I = int(x.size());
    for (int o = 0; o < O; o++)
      for (int i = 0; i < I; i++) y[o] += w[size_t(o) * I + i] * x[i];
    return y;
  }
  std::vector<double> rmsnorm(const std::vector<double>& x, const double* w) const {
    double ss = 0;
    for (double v : x) ss += v * v;
    double r = 1.0 / std::sqrt(ss / x.size() + c.rms_norm_eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); i++) y[i] = x[i] * r * w[i];
    return y;
  }
  void rope(std::vector<double>& x, int heads, int pos) const {
    const int d = c.head_dim;
    for (int h = 0; h < heads; h++)
      for (int i = 0; i < d / 2; i++) {
        double ang = pos * std::pow(c.rope_theta, -2.0 * i / d);
        double a = x[h * d + i], b = x[h * d + i + d / 2];
        x[h * d + i] = a * std::cos(ang) - b * std::sin(ang);
        x[h * d + i + d / 2] = b * std::cos(ang) + a * std::sin(ang);
      }
  }
  std::vector<double> swiglu_ffn(const double* w1, const double* w3, const double* w2, const std::vector<double>& x,
                                 int I) const {
    auto a = linear(w1, x, I), b = linear(w3, x, I);
    for (int i = 0; i < I; i++) a[i] = a[i] / (1 + std::exp(-a[i])) * b[i];
    return linear(w2, a, c.hidden_size);
  }
};

}  // namespace

RefOut ref_forward(const ModelConfig& c, const std::vector<double>& params, const std::vector<int32_t>& tokens,
                   int B, int Tseq, double cf) {
  Ref R(c, params);
  RefOut out;
  // t indexes all B*T rows; attention stays inside each row's own sequence.
  const int T = B * Tseq, H = c.hidden_size, d = c.head_dim, E = c.num_experts, k = c.top_k;
  std::vector<std::vector<double>> x(T, std::vector<double>(H));
  const double* embed = R.W("model.embed_tokens.weight");
  for (int t = 0; t < T; t++)
    for (int i = 0; i < H; i++) x[t][i] = embed[size_t(tokens[t]) * H + i];
  for (int l = 0; l < c.num_layers; l++) {
    std::string P = "model.layers." + std::to_string(l) + ".";
    const double *ln1 = R.W(P + "input_layernorm.weight"), *wq = R.W(P + "self_attn.q_proj.weight"),
                 *wk = R.W(P + "self_attn.k_proj.weight"), *wv = R.W(P + "self_attn.v_proj.weight"),
                 *wo = R.W(P + "self_attn.o_proj.weight"), *ln2 = R.W(P + "post_attention_layernorm.weight");
    std::vector<std::vector<double>> q(T), kk(T), vv(T);
    for (int t = 0; t < T; t++) {
      auto h = R.rmsnorm(x[t], ln1);
      q[t] = R.linear(wq, h, c.q_dim());
      kk[t] = R.linear(wk, h, c.kv_dim());
      vv[t] = R.linear(wv, h, c.kv_dim());
      R.rope(q[t], c.num_heads, t % Tseq);
      R.rope(kk[t], c.num_kv_heads, t % Tseq);
    }
    const int group = c.num_heads / c.num_kv_heads;
    for (int t = 0; t < T; t++) {
      std::vector<double> ctx(c.q_dim(), 0.0);
      for (int h = 0; h < c.num_heads; h++) {
        const int g = h / group;
        const int t0 = t / Tseq * Tseq;  // first row of this sequence
        std::vector<double> s(t - t0 + 1);
        for (int u = t0; u <= t; u++) {
          double dot = 0;
          for (int i = 0; i < d; i++) dot += q[t][h * d + i] * kk[u][g * d + i];
          s[u - t0] = dot / std::sqrt(double(d));
        }
        double mx = *std::max_element(s.begin(), s.end()), z = 0;
        for (auto& v : s) z += v = std::exp(v - mx);
        for (int u = t0; u <= t; u++)
          for (int i = 0; i < d; i++) ctx[h * d + i] += s[u - t0] / z * vv[u][g * d + i];
      }
      auto o = R.linear(wo, ctx, H);
      for (int i = 0; i < H; i++) x[t][i] += o[i];
    }
    std::vector<std::vector<double>> h2(T);
    for (int t = 0; t < T; t++) h2[t] = R.rmsnorm(x[t], ln2);
    if (!c.layer_is_moe(l)) {
      for (int t = 0; t < T; t++) {
        auto f = R.swiglu_ffn(R.W(P + "mlp.gate_proj.weight"), R.W(P + "mlp.up_proj.weight"),
                              R.W(P + "mlp.down_proj.weight"), h2[t], c.intermediate_size);
        for (int i = 0; i < H; i++) x[t][i] += f[i];
      }
      if (c.has_moe()) {  // a dense layer of a mixed model: no router statistics
        out.zloss.push_back(0.0);
        out.drop_rates.push_back(0.0);
        out.aux.push_back(0.0);
      }
      continue;
    }
    // Router: logits -> (normalize with unbiased std) -> softmax -> top-k -> renormalize.
    std::vector<std::vector<double>> g(T);
    std::vector<std::vector<int>> sel(T);
    double zsum = 0;
    const double* gate = R.W(P + "block_sparse_moe.gate.weight");
    for (int t = 0; t < T; t++) {
      auto z = R.linear(gate, h2[t], E);
      {  // router z-loss term of this token, on the raw logits
        double zm = *std::max_element(z.begin(), z.end()), se = 0;
        for (double v : z) se += std::exp(v - zm);
        const double lse = zm + std::log(se);
        zsum += lse * lse;
      }
      if (c.logits_norm) {
        double mean = std::accumulate(z.begin(), z.end(), 0.0) / E, var = 0;
        for (double v : z) var += (v - mean) * (v - mean);
        double sd = std::sqrt(var / (E - 1));
        for (auto& v : z) v = c.gate_norm_std * (v - mean) / sd;
      }
      g[t].resize(E);
      if (c.router_sigmoid) {
        for (int e = 0; e < E; e++) g[t][e] = 1.0 / (1.0 + std::exp(-z[e]));
      } else {
        double mx = *std::max_element(z.begin(), z.end()), s = 0;
        for (int e = 0; e < E; e++) s += g[t][e] = std::exp(z[e] - mx);
        for (auto& v : g[t]) v /= s;
      }
      std::vector<int> order(E);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return g[t][a] > g[t][b]; });
      sel[t].assign(order.begin(), order.begin() + k);
    }
    // Capacity: per expert keep the highest-probability assignments (ties: earlier token).
    std::vector<std::vector<bool>> kept(T, std::vector<bool>(k, true));
    int dropped = 0;
    if (cf > 0) {
      const int cap = int(std::ceil(cf * T * k / E));
      for (int e = 0; e < E; e++) {
        std::vector<std::pair<int, int>> as;  // (token, slot)
        for (int t = 0; t < T; t++)
          for (int j = 0; j < k; j++)
            if (sel[t][j] == e) as.push_back({t, j});
        std::stable_sort(as.begin(), as.end(), [&](auto a, auto b) { return g[a.first][e] > g[b.first][e]; });
        for (size_t r = cap; r < as.size(); r++) { kept[as[r].first][as[r].second] = false; dropped++; }
      }
    }
    out.zloss.push_back(zsum / T);
    out.drop_rates.push_back(double(dropped) / (double(T) * k));
    double aux = 0;
    for (int e = 0; e < E; e++) {
      double mean = 0;
      for (int t = 0; t < T; t++) mean += g[t][e] / T;
      aux += (1.0 / E - mean) * (1.0 / E - mean);
    }
    out.aux.push_back(aux);
    std::vector<const double*> w1(E), w3(E), w2(E);
    for (int e = 0; e < E; e++) {
      w1[e] = R.W(skytest::expert_name(l, e, "w1"));
      w3[e] = R.W(skytest::expert_name(l, e, "w3"));
      w2[e] = R.W(skytest::expert_name(l, e, "w2"));
    }
    for (int t = 0; t < T; t++) {
      double s = 0;
      for (int j = 0; j < k; j++) s += g[t][sel[t][j]];
      for (int j = 0; j < k; j++) {
        if (!kept[t][j]) continue;
        const int e = sel[t][j];
        auto f = R.swiglu_ffn(w1[e], w3[e], w2[e], h2[t], c.moe_intermediate_size);
        const double wt = (c.norm_topk_prob ? g[t][e] / s : g[t][e]) * c.routed_scaling_factor;
        for (int i = 0; i < H; i++) x[t][i] += wt * f[i];
      }
    }
  }
  out.logits.resize(size_t(T) * c.vocab_size);
  const double *norm = R.W("model.norm.weight"),
               *head = R.W(c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  for (int t = 0; t < T; t++) {
    auto h = R.rmsnorm(x[t], norm);
    auto lg = R.linear(head, h, c.vocab_size);
    std::copy(lg.begin(), lg.end(), out.logits.begin() + size_t(t) * c.vocab_size);
  }
  return out;
}

sky::Model scaled_model(const ModelConfig& c, uint64_t seed, uint64_t noise_seed, double matrix_std,
                        double norm_coef) {
  sky::Model m = sky::Model::random(c, seed);
  auto r = randn(m.layout.total, noise_seed, matrix_std);
  for (auto& s : m.layout.specs)
    for (size_t i = 0; i < s.numel(); i++)
      m.params[s.offset + i] = s.shape.size() == 1 ? float(1.0 + norm_coef * r[s.offset + i]) : float(r[s.offset + i]);
  return m;
}

double ref_loss(const ModelConfig& c, const std::vector<double>& logits, const std::vector<int32_t>& targets) {
  const int V = c.vocab_size;
  double sum = 0;
  for (size_t t = 0; t < targets.size(); t++) {
    const double* l = logits.data() + t * V;
    double mx = *std::max_element(l, l + V), z = 0;
    for (int v = 0; v < V; v++) z += std::exp(l[v] - mx);
    sum += mx + std::log(z) - l[targets[t]];
  }
  return sum / targets.size();
}

double ref_objective(const ModelConfig& c, const std::vector<double>& params, const std::vector<int32_t>& inputs,
                     const std::vector<int32_t>& targets, int B, int T, double cf, const std::vector<double>& alpha,
                     double z_coef, RefOut* out) {
  RefOut r = ref_forward(c, params, inputs, B, T, cf);
  double total = ref_loss(c, r.logits, targets);
  for (size_t l = 0; l < r.aux.size(); l++)
    total += (l < alpha.size() ? alpha[l] : 0.0) * r.aux[l] + z_coef * r.zloss[l];
  if (out) *out = std::move(r);
  return total;
}

}  // namespace skytest
