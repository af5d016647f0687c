// A sharded model directory: model.safetensors.index.json plus up to three shards. The input is
// the index, then each shard's bytes, separated by kSep; the shards are named 1.safetensors,
// 2.safetensors and 3.safetensors (the seeds' index maps tensors to those names).
// Expected: the directory opens, or sky::Error. A finding besides crashes and sanitizer reports: an
// accepted tensor outside its shard, or one the index maps to a shard that does not hold it.
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "fuzz_util.h"
#include "io/safetensors.h"

static constexpr std::string_view kSep = "\n=====\n";

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string_view> parts =
      fuzz::split(std::string_view(reinterpret_cast<const char*>(data), size), kSep, 4);
  std::vector<std::pair<std::string, std::string_view>> files = {{"model.safetensors.index.json", parts[0]}};
  std::map<std::string, size_t> sizes;  // full path -> bytes
  for (size_t i = 1; i < parts.size(); i++) {
    const std::string name = std::to_string(i) + ".safetensors";
    files.emplace_back(name, parts[i]);
    sizes[fuzz::scratch_dir() + "/" + name] = parts[i].size();
  }
  fuzz::write_files(files);
  try {
    const sky::SafetensorsReader r = sky::SafetensorsReader::open(fuzz::scratch_dir());
    // The index was valid JSON (the reader parsed it); each mapped tensor must be where it says.
    const nlohmann::json idx = nlohmann::json::parse(parts[0]);
    for (const auto& [tensor, shard] : idx.at("weight_map").items()) {
      FUZZ_CHECK(r.has(tensor), "mapped tensor '%s' missing", tensor.c_str());
      FUZZ_CHECK(r.info(tensor).file == fuzz::scratch_dir() + "/" + shard.get<std::string>(),
                 "tensor '%s' read from %s, mapped to %s", tensor.c_str(), r.info(tensor).file.c_str(),
                 shard.get<std::string>().c_str());
    }
    for (const std::string& name : r.names()) {
      const sky::TensorInfo& i = r.info(name);
      FUZZ_CHECK(sizes.count(i.file), "tensor '%s' from unexpected file %s", name.c_str(), i.file.c_str());
      const size_t n = sizes[i.file];
      FUZZ_CHECK(i.offset <= n && i.nbytes <= n - i.offset, "tensor '%s' at %zu + %zu bytes, shard of %zu",
                 name.c_str(), i.offset, i.nbytes, n);
      FUZZ_CHECK(r.get(name).nbytes() == i.nbytes, "tensor '%s': shape and offsets disagree", name.c_str());
    }
  } catch (const sky::Error&) {
  }
  return 0;
}
