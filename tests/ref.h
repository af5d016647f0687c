#pragma once
// Shared test helpers: fresh random inputs (never zeros), comparisons, finite differences.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace skytest {

// Normal(0, scale) values from a seed that differs per call site (pass __LINE__ or a counter).
std::vector<double> randn(size_t n, uint64_t seed, double scale = 1.0);
std::vector<float> to_float(const std::vector<double>& v);
std::vector<double> to_double(const std::vector<float>& v);

// max_i |a_i - b_i| / (atol + rtol * |b_i|) -- <= 1 means "within tolerance".
double max_err_ratio(const double* a, const double* b, size_t n, double atol, double rtol);
double max_err_ratio(const float* a, const double* b, size_t n, double atol, double rtol);
double max_abs_diff(const double* a, const double* b, size_t n);

// Central finite difference of a scalar function f wrt every entry of x (x is restored).
std::vector<double> numeric_grad(const std::function<double()>& f, double* x, size_t n, double h = 1e-6);

// An expert's HF tensor name, spelled here rather than taken from the engine's table.
inline std::string expert_name(int layer, int expert, const std::string& w) {
  return "model.layers." + std::to_string(layer) + ".block_sparse_moe.experts." + std::to_string(expert) + "." + w +
         ".weight";
}

// The message of the sky::Error f throws, or "" when it throws none.
std::string error_of(const std::function<void()>& f);

// A fresh temporary directory (removed by the caller or left for inspection).
std::string temp_dir(const std::string& tag);
// Runs a shell command with stderr folded into stdout; returns pclose's status, output in *out.
int shell(const std::string& cmd, std::string* out = nullptr);

}  // namespace skytest
