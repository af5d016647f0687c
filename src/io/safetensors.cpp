#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "core/error.h"
#include "io/json_input.h"
#include "io/atomic_file.h"

// Alignment: the data section starts right after the header, and tensors are packed back to back,
// so a tensor's bytes are in general only aligned to its offset (an F32 following an odd-length
// BF16 tensor sits at an odd address). get() still hands out that pointer, zero-copy; consumers
// that need aligned or typed access convert or copy (Tensor::to, convert_to_f32). The mapping is
// read-only: writing through Tensor::data of a mapped tensor faults.

namespace sky {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The reference implementation's limit too; a larger value means the file is not safetensors.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
const char* const kSingleName = "model.safetensors";
const char* const kIndexName = "model.safetensors.index.json";

struct Mapping {
  std::shared_ptr<void> base;  // munmaps when the last tensor or reader lets go
  size_t size = 0;
};

Mapping map_file(const std::string& file) {
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // a FIFO must not block: the S_ISREG check refuses it
  if (fd < 0) fail("cannot open safetensors file {}: {}", file, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("cannot read safetensors file {}: not a regular file", file);
  }
  const size_t size = size_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail("{} is {} bytes, too short for a safetensors file (it must start with an 8-byte header length)",
         file, size);
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping stays valid without the descriptor
  if (p == MAP_FAILED) fail("cannot mmap {}: {}", file, std::strerror(err));
  return {std::shared_ptr<void>(p, [size](void* q) { ::munmap(q, size); }), size};
}

struct Header {
  std::vector<TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
};

// numel * elem_size, or false when that does not fit in 64 bits or the nonzero dimensions'
// product does not fit in int64: a zero dimension makes the tensor empty, but Tensor::numel()
// still multiplies every dimension in order, and [2^62, 2^62, 0] would overflow on the way.
bool byte_size(const Shape& shape, size_t elem_size, uint64_t* out) {
  int64_t numel = 1;
  bool overflow = false, empty = false;
  for (int64_t d : shape) {
    if (d == 0) empty = true;
    else overflow |= __builtin_mul_overflow(numel, d, &numel);
  }
  uint64_t n = 0;
  if (!empty) overflow |= __builtin_mul_overflow(uint64_t(numel), uint64_t(elem_size), &n);
  *out = n;
  return !overflow;
}

TensorInfo parse_entry(const std::string& file, const std::string& name, const json& v, uint64_t data_begin,
                       uint64_t data_size) {
  if (!v.is_object()) fail("{}: tensor '{}': entry {} is not an object", file, name, v.dump());
  auto field = [&](const char* key) -> const json& {
    auto it = v.find(key);
    if (it == v.end()) fail("{}: tensor '{}': missing field '{}'", file, name, key);
    return *it;
  };
  TensorInfo info;
  info.name = name;
  info.file = file;

  const json& jd = field("dtype");
  if (!jd.is_string()) fail("{}: tensor '{}': dtype {} is not a string", file, name, jd.dump());
  if (!dtype_from_name(jd.get<std::string>(), &info.dtype))
    fail("{}: tensor '{}': unknown dtype '{}' (expected F32, BF16, F16, F8_E4M3, F8_E5M2, U32 or I64)", file,
         name, jd.get<std::string>());

  const json& js = field("shape");
  if (!js.is_array()) fail("{}: tensor '{}': shape {} is not a list", file, name, js.dump());
  for (const json& d : js) {
    // The parser stores non-negative integers as unsigned; negatives and 2.0 fail is_number_unsigned.
    if (!d.is_number_unsigned() || d.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
      fail("{}: tensor '{}': shape {} is not a list of non-negative integers", file, name, js.dump());
    info.shape.push_back(int64_t(d.get<uint64_t>()));
  }

  const json& jo = field("data_offsets");
  if (!jo.is_array() || jo.size() != 2 || !jo[0].is_number_unsigned() || !jo[1].is_number_unsigned())
    fail("{}: tensor '{}': data_offsets {} is not [begin, end] of non-negative integers", file, name, jo.dump());
  const uint64_t begin = jo[0].get<uint64_t>(), end = jo[1].get<uint64_t>();
  if (begin > end) fail("{}: tensor '{}': data_offsets {} has begin > end", file, name, jo.dump());
  if (end > data_size)
    fail("{}: tensor '{}': data_offsets {} end past the data section ({} bytes)", file, name, jo.dump(),
         data_size);

  uint64_t expect = 0;
  const bool fits = byte_size(info.shape, dtype_size(info.dtype), &expect);
  if (!fits || expect != end - begin)
    fail("{}: tensor '{}': data_offsets {} span {} bytes, but shape {} of {} needs {}", file, name, jo.dump(),
         end - begin, shape_str(info.shape), dtype_name(info.dtype),
         fits ? std::to_string(expect) : std::string("more than 2^64 (or more than 2^63 elements)"));
  info.offset = data_begin + begin;
  info.nbytes = end - begin;
  return info;
}

Header parse_header(const std::string& file, const Mapping& m) {
  const auto* p = static_cast<const unsigned char*>(m.base.get());
  uint64_t n = 0;
  for (int i = 0; i < 8; i++) n |= uint64_t(p[i]) << (8 * i);  // little-endian on every host
  if (n > kMaxHeaderBytes)
    fail("{}: header length {} is absurd (limit {} bytes); not a safetensors file?", file, n, kMaxHeaderBytes);
  if (n > m.size - 8) fail("{}: header length {} exceeds the file size of {} bytes", file, n, m.size);

  // nlohmann keeps the last of duplicate keys silently; a duplicated tensor is a broken file.
  std::set<std::string> keys;
  auto on_event = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::key && depth == 1 && !keys.insert(parsed.get<std::string>()).second)
      fail("{}: header lists '{}' twice", file, parsed.get<std::string>());
  };
  const char* h = reinterpret_cast<const char*>(p + 8);
  const json j = parse_json(h, h + n, file + " header", on_event);
  if (!j.is_object()) fail("{}: header is not a JSON object", file);

  const uint64_t data_begin = 8 + n, data_size = m.size - data_begin;
  Header out;
  for (const auto& [key, v] : j.items()) {
    if (key == "__metadata__") {
      if (!v.is_object()) fail("{}: __metadata__ {} is not an object", file, v.dump());
      for (const auto& [mk, mv] : v.items()) {
        if (!mv.is_string()) fail("{}: __metadata__ value of '{}' is {}, not a string", file, mk, mv.dump());
        out.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    out.tensors.push_back(parse_entry(file, key, v, data_begin, data_size));
  }

  // Overlap check on a sorted copy; empty tensors occupy no bytes and cannot overlap anything.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : out.tensors)
    if (t.nbytes) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); i++) {
    const TensorInfo &a = *by_offset[i - 1], &b = *by_offset[i];
    if (b.offset < a.offset + a.nbytes)
      fail("{}: tensors '{}' (data_offsets [{}, {}]) and '{}' (data_offsets [{}, {}]) overlap", file, a.name,
           a.offset - data_begin, a.offset - data_begin + a.nbytes, b.name, b.offset - data_begin,
           b.offset - data_begin + b.nbytes);
  }
  return out;
}

}  // namespace

SafetensorsReader SafetensorsReader::open(const std::string& path) {
  SafetensorsReader r;
  r.path_ = path;
  // Each file is mapped and validated once; its tensors join infos_ (names unique across files).
  auto add_file = [&r](const std::string& file) -> std::set<std::string> {
    Mapping m = map_file(file);
    Header h = parse_header(file, m);
    std::set<std::string> names;
    for (auto& t : h.tensors) {
      names.insert(t.name);
      auto [it, fresh] = r.infos_.emplace(t.name, t);
      if (!fresh) fail("tensor '{}' appears in both {} and {}", t.name, it->second.file, file);
    }
    for (auto& [k, v] : h.metadata) r.metadata_.emplace(k, v);
    r.maps_[file] = m.base;
    return names;
  };

  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    add_file(path);
    return r;
  }
  const fs::path dir(path);
  const std::string single = (dir / kSingleName).string(), index = (dir / kIndexName).string();
  const bool has_single = fs::exists(single, ec), has_index = fs::exists(index, ec);
  // Refuse to guess which of two layouts is current (write_safetensors_dir never leaves both).
  if (has_single && has_index)
    fail("directory {} holds both {} and {}; remove the stale one", path, kSingleName, kIndexName);
  if (has_single) {
    add_file(single);
    return r;
  }
  if (!has_index) fail("no {} or {} in directory {}", kSingleName, kIndexName, path);

  const json idx = read_json_file(index);
  if (!idx.is_object()) fail("{}: not a JSON object", index);
  auto wm = idx.find("weight_map");
  if (wm == idx.end() || !wm->is_object()) fail("{}: missing 'weight_map' object", index);
  std::map<std::string, std::vector<std::string>> by_shard;  // shard file name -> tensors it should hold
  for (const auto& [tensor, shard] : wm->items()) {
    if (!shard.is_string()) fail("{}: weight_map entry of '{}' is {}, not a file name", index, tensor, shard.dump());
    const std::string s = shard.get<std::string>();
    // Shards live next to the index; a path could point anywhere on disk.
    if (s.empty() || s == "." || s == ".." || s.find('/') != std::string::npos)
      fail("{}: weight_map entry of '{}' is '{}', not a plain file name", index, tensor, s);
    by_shard[s].push_back(tensor);
  }
  if (auto md = idx.find("metadata"); md != idx.end() && !md->is_null()) {
    if (!md->is_object()) fail("{}: 'metadata' is not an object", index);
    for (const auto& [k, v] : md->items()) r.metadata_[k] = v.is_string() ? v.get<std::string>() : v.dump();
  }
  for (const auto& [shard, tensors] : by_shard) {
    const std::string file = (dir / shard).string();
    if (!fs::exists(file, ec))
      fail("{}: shard {} (holding tensor '{}') does not exist", index, file, tensors.front());
    const std::set<std::string> present = add_file(file);
    for (const auto& t : tensors)
      if (!present.count(t)) fail("{}: tensor '{}' is mapped to {}, which does not contain it", index, t, file);
  }
  return r;
}

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  out.reserve(infos_.size());
  for (const auto& kv : infos_) out.push_back(kv.first);
  return out;
}

const TensorInfo& SafetensorsReader::info(const std::string& name) const {
  auto it = infos_.find(name);
  if (it == infos_.end()) fail("tensor '{}' not found in {}", name, path_);
  return it->second;
}

SafetensorsReader SafetensorsReader::from_virtual(std::string path, std::vector<Virtual> tensors) {
  SafetensorsReader r;
  r.path_ = std::move(path);
  for (Virtual& v : tensors) {
    const std::string name = v.info.name;
    SKY_CHECK(!r.virtual_.count(name), "{}: tensor '{}' given twice", r.path_, name);
    r.infos_[name] = v.info;
    r.virtual_.emplace(name, std::move(v));
  }
  return r;
}

bool SafetensorsReader::has_blocks(const std::string& name) const {
  auto it = virtual_.find(name);
  return it != virtual_.end() && bool(it->second.blocks);
}

BlockTensor SafetensorsReader::blocks(const std::string& name) const {
  auto it = virtual_.find(name);
  if (it == virtual_.end() || !it->second.blocks) fail("tensor '{}' in {} has no block form", name, path_);
  return it->second.blocks();
}

Tensor SafetensorsReader::get(const std::string& name) const {
  const TensorInfo& i = info(name);
  if (auto it = virtual_.find(name); it != virtual_.end()) return it->second.make();
  const std::shared_ptr<void>& base = maps_.at(i.file);
  Tensor t;
  t.dtype = i.dtype;
  t.shape = i.shape;
  t.data = static_cast<char*>(base.get()) + i.offset;
  t.owner = base;
  return t;
}

Tensor SafetensorsReader::get_checked(const std::string& name, const Shape& expected) const {
  const TensorInfo& i = info(name);
  if (i.shape != expected)
    fail("tensor '{}' in {} has shape {}, expected {}", name, i.file, shape_str(i.shape), shape_str(expected));
  return get(name);
}

// ---- writing ----

namespace {

void check_tensors(const std::string& where, const NamedTensors& tensors) {
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == "__metadata__") fail("cannot write {}: invalid tensor name '{}'", where, name);
    if (!seen.insert(name).second) fail("cannot write {}: tensor '{}' given twice", where, name);
    for (int64_t d : t.shape)
      if (d < 0) fail("cannot write {}: tensor '{}' has shape {}", where, name, shape_str(t.shape));
    if (t.nbytes() > 0 && !t.data) fail("cannot write {}: tensor '{}' has no data", where, name);
  }
}

// The header in the given tensor order, padded with spaces so the data starts at an 8-byte multiple.
std::string make_header(const std::string& where, const NamedTensors& tensors,
                        const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  uint64_t off = 0;
  for (const auto& [name, t] : tensors) {
    const uint64_t n = t.nbytes();
    j[name] = {{"dtype", dtype_name(t.dtype)},
               {"shape", t.shape},
               {"data_offsets", nlohmann::ordered_json::array({off, off + n})}};
    off += n;
  }
  std::string h;
  try {
    h = j.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a name that is not UTF-8
    fail("cannot write {}: {}", where, e.what());
  }
  h.append((8 - (8 + h.size()) % 8) % 8, ' ');
  return h;
}

void write_one(const std::string& path, const NamedTensors& tensors,
               const std::map<std::string, std::string>& metadata) {
  const std::string h = make_header(path, tensors, metadata);
  write_file_atomic(path, [&](std::FILE* f) {
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = static_cast<unsigned char>(uint64_t(h.size()) >> (8 * i));
    std::fwrite(len, 1, 8, f);
    std::fwrite(h.data(), 1, h.size(), f);
    for (const auto& nt : tensors)
      if (nt.second.nbytes()) std::fwrite(nt.second.data, 1, nt.second.nbytes(), f);
  });
}

void remove_file(const fs::path& p) {
  std::error_code ec;
  fs::remove(p, ec);
  if (ec) fail("cannot remove stale file {}: {}", p.string(), ec.message());
}

// Removes weight files in `dir` that the layout just written does not use. Entry points (single
// file, index) go first, so a crash midway never leaves a reader pointed at stale shards.
void remove_stale(const fs::path& dir, const std::set<std::string>& keep) {
  static const std::regex shard_re(R"(model-\d+-of-\d+\.safetensors)");
  std::vector<fs::path> shards;
  for (const char* entry : {kIndexName, kSingleName})
    if (!keep.count(entry) && fs::exists(dir / entry)) remove_file(dir / entry);
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (!keep.count(n) && std::regex_match(n, shard_re)) shards.push_back(e.path());
  }
  for (const auto& p : shards) remove_file(p);
}

}  // namespace

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  check_tensors(path, tensors);
  write_one(path, tensors, metadata);
}

void write_safetensors_dir(const std::string& dir, const NamedTensors& tensors, size_t max_shard_bytes,
                           const std::map<std::string, std::string>& metadata) {
  check_tensors(dir, tensors);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail("cannot create directory {}: {}", dir, ec.message());
  const fs::path d(dir);

  uint64_t total = 0;
  for (const auto& nt : tensors) total += nt.second.nbytes();
  if (total <= max_shard_bytes) {
    write_one((d / kSingleName).string(), tensors, metadata);
    remove_stale(d, {kSingleName});
    return;
  }

  // Greedy in the given order; a tensor bigger than the limit gets a shard of its own.
  std::vector<NamedTensors> shards;
  uint64_t fill = 0;
  for (const auto& nt : tensors) {
    const uint64_t n = nt.second.nbytes();
    if (shards.empty() || (fill > 0 && fill + n > max_shard_bytes)) {
      shards.emplace_back();
      fill = 0;
    }
    shards.back().push_back(nt);
    fill += n;
  }

  json weight_map = json::object();
  std::set<std::string> keep{kIndexName};
  for (size_t i = 0; i < shards.size(); i++) {
    const std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
    write_one((d / name).string(), shards[i], metadata);
    for (const auto& nt : shards[i]) weight_map[nt.first] = name;
    keep.insert(name);
  }
  // The index last, so it never names a shard that is not fully written yet.
  const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  write_text_atomic((d / kIndexName).string(), index.dump(2) + "\n");
  remove_stale(d, keep);
}

}  // namespace sky
