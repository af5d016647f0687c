// One .safetensors file: the 8-byte header length, the JSON header, the data section.
// Expected: the file opens, or sky::Error. A finding besides crashes and sanitizer reports: a
// tensor the reader accepted whose bytes do not lie inside the file or do not match its shape.
#include <cstdint>

#include "core/error.h"
#include "fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::MemFile file;
  const std::string& path = file.write(data, size);
  try {
    const sky::SafetensorsReader r = sky::SafetensorsReader::open(path);
    for (const std::string& name : r.names()) {
      const sky::TensorInfo& i = r.info(name);
      FUZZ_CHECK(i.offset <= size && i.nbytes <= size - i.offset, "tensor '%s' at %zu + %zu bytes, file of %zu",
                 name.c_str(), i.offset, i.nbytes, size);
      const sky::Tensor t = r.get(name);
      FUZZ_CHECK(t.nbytes() == i.nbytes, "tensor '%s': shape gives %zu bytes, offsets %zu", name.c_str(),
                 t.nbytes(), i.nbytes);
      if (i.nbytes) {  // the mapping is not ASan-tracked: compare with the input instead
        const auto* p = static_cast<const uint8_t*>(t.data);
        FUZZ_CHECK(p[0] == data[i.offset] && p[i.nbytes - 1] == data[i.offset + i.nbytes - 1],
                   "tensor '%s' does not map its bytes", name.c_str());
      }
    }
    for (const auto& [k, v] : r.metadata()) (void)k, (void)v;
  } catch (const sky::Error&) {
  }
  return 0;
}
