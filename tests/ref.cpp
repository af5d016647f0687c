#include <cstdio>
#include "ref.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>
#include <unistd.h>

#include "core/error.h"

namespace skytest {

std::vector<double> randn(size_t n, uint64_t seed, double scale) {
  std::mt19937_64 g(seed * 7919 + 17);
  std::normal_distribution<double> d(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const sky::Error& e) {
    return e.what();
  }
  return "";
}

std::vector<float> to_float(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }
std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

double max_err_ratio(const double* a, const double* b, size_t n, double atol, double rtol) {
  double m = 0;
  for (size_t i = 0; i < n; i++) m = std::max(m, std::fabs(a[i] - b[i]) / (atol + rtol * std::fabs(b[i])));
  return m;
}

double max_err_ratio(const float* a, const double* b, size_t n, double atol, double rtol) {
  double m = 0;
  for (size_t i = 0; i < n; i++) m = std::max(m, std::fabs(double(a[i]) - b[i]) / (atol + rtol * std::fabs(b[i])));
  return m;
}

double max_abs_diff(const double* a, const double* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

std::vector<double> numeric_grad(const std::function<double()>& f, double* x, size_t n, double h) {
  std::vector<double> g(n);
  for (size_t i = 0; i < n; i++) {
    double old = x[i];
    x[i] = old + h;
    double fp = f();
    x[i] = old - h;
    double fm = f();
    x[i] = old;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

std::string temp_dir(const std::string& tag) {
  static int counter = 0;
  auto p = std::filesystem::temp_directory_path() /
           ("skymoe-test-" + tag + "-" + std::to_string(getpid()) + "-" + std::to_string(counter++));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

int shell(const std::string& cmd, std::string* out) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return -1;
  std::string s;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) s.append(buf, n);
  const int rc = pclose(p);
  if (out) *out = s;
  return rc;
}

}  // namespace skytest
