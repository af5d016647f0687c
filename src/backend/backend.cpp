#include "backend/backend.h"

#include <fmt/format.h>

#include "core/error.h"

namespace sky {

Backend& cpu_backend_instance();
Backend& ref_backend_instance();

std::vector<std::string> device_names() { return {"cpu", "ref"}; }

Backend& backend(const std::string& device) {
  if (device == "cpu") return cpu_backend_instance();
  if (device == "ref") return ref_backend_instance();
  fail("--device '{}': unknown device (expected one of: {})", device, fmt::join(device_names(), ", "));
}

MatmulPrecision parse_matmul_precision(const std::string& s) {
  if (s == "f32") return MatmulPrecision::F32;
  if (s == "bf16") return MatmulPrecision::BF16;
  fail("--precision: expected f32 or bf16, got '{}'", s);
}

}  // namespace sky
