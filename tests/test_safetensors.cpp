#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "core/tensor.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "ref.h"

using namespace sky;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_all(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; i++) s[i] = char((n >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file assembled by hand: length prefix, header text as given, data bytes.
std::string raw_file(const std::string& header, const std::string& data) { return le64(header.size()) + header + data; }

// Random bytes, none zero, so a missed or shifted copy cannot pass by accident.
Tensor random_tensor(DType dt, Shape shape, uint32_t seed) {
  Tensor t = Tensor::empty(dt, std::move(shape));
  std::mt19937 rng(seed);
  auto* p = static_cast<unsigned char*>(t.data);
  for (size_t i = 0; i < t.nbytes(); i++) p[i] = static_cast<unsigned char>(1 + rng() % 255);
  return t;
}

NamedTensors sample_tensors() {
  return {{"embed.weight", random_tensor(DType::BF16, {7, 5}, 1)},
          {"layers.0.norm", random_tensor(DType::F32, {3}, 2)},
          {"layers.0.w8", random_tensor(DType::F8_E4M3, {3, 1, 9}, 3)},
          {"layers.0.w8b", random_tensor(DType::F8_E5M2, {11}, 4)},
          {"layers.0.half", random_tensor(DType::F16, {1, 13}, 5)},
          {"scalar", random_tensor(DType::F32, {}, 6)},
          {"empty", random_tensor(DType::F32, {0, 4}, 7)},
          {"ids", random_tensor(DType::I64, {2, 3}, 8)},
          {"counts", random_tensor(DType::U32, {5}, 9)}};
}

void expect_same(const SafetensorsReader& r, const NamedTensors& tensors) {
  ASSERT_EQ(r.names().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(r.has(name));
    Tensor g = r.get(name);
    EXPECT_EQ(g.dtype, t.dtype);
    EXPECT_EQ(g.shape, t.shape);
    EXPECT_EQ(r.info(name).nbytes, t.nbytes());
    ASSERT_EQ(g.nbytes(), t.nbytes());
    EXPECT_EQ(std::memcmp(g.data, t.data, t.nbytes()), 0);
  }
}

// Runs f, expecting a sky::Error whose message contains every one of `parts`.
template <class F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    return;
  }
  ADD_FAILURE() << "no sky::Error thrown";
}

// Writes a hand-made file and expects open() to fail naming the file and `parts`.
void expect_bad_file(const std::string& header, const std::string& data, std::initializer_list<std::string> parts) {
  std::string path = skytest::temp_dir("st-bad") + "/bad.safetensors";
  write_all(path, raw_file(header, data));
  expect_error([&] { SafetensorsReader::open(path); }, {path});
  expect_error([&] { SafetensorsReader::open(path); }, parts);
}

std::vector<std::string> dir_listing(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

// ---- round trips ----

TEST(Safetensors, RoundTripSingleFile) {
  std::string path = skytest::temp_dir("st-rt") + "/w.safetensors";
  NamedTensors ts = sample_tensors();
  std::map<std::string, std::string> md{{"format", "pt"}, {"note", "hello \"world\""}};
  write_safetensors(path, ts, md);

  SafetensorsReader r = SafetensorsReader::open(path);
  expect_same(r, ts);
  EXPECT_EQ(r.metadata(), md);
  EXPECT_EQ(r.path(), path);
  auto names = r.names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(r.info("layers.0.norm").file, path);

  // Layout checks straight from the bytes: padded header, tensors in the given order, contiguous.
  std::string bytes = read_all(path);
  uint64_t n = 0;
  for (int i = 0; i < 8; i++) n |= uint64_t(uint8_t(bytes[i])) << (8 * i);
  EXPECT_EQ((8 + n) % 8, 0u);
  nlohmann::ordered_json h = nlohmann::ordered_json::parse(bytes.substr(8, n));
  auto it = h.begin();
  EXPECT_EQ(it.key(), "__metadata__");
  uint64_t off = 0;
  for (const auto& [name, t] : ts) {
    ++it;
    ASSERT_EQ(it.key(), name);
    EXPECT_EQ((*it)["dtype"], dtype_name(t.dtype));
    EXPECT_EQ((*it)["data_offsets"][0].get<uint64_t>(), off);
    off += t.nbytes();
    EXPECT_EQ((*it)["data_offsets"][1].get<uint64_t>(), off);
  }
  EXPECT_EQ(bytes.size(), 8 + n + off);
  EXPECT_EQ(r.info("embed.weight").offset, 8 + n);
}

TEST(Safetensors, NoMetadataKeyWhenEmpty) {
  std::string path = skytest::temp_dir("st-nomd") + "/w.safetensors";
  write_safetensors(path, {{"a", random_tensor(DType::F32, {2}, 1)}});
  std::string bytes = read_all(path);
  EXPECT_EQ(bytes.find("__metadata__"), std::string::npos);
  EXPECT_TRUE(SafetensorsReader::open(path).metadata().empty());
}

TEST(Safetensors, EmptyTensorListRoundTrips) {
  std::string path = skytest::temp_dir("st-none") + "/w.safetensors";
  write_safetensors(path, {});
  EXPECT_TRUE(SafetensorsReader::open(path).names().empty());
}

TEST(Safetensors, DirectorySingleFile) {
  std::string dir = skytest::temp_dir("st-dir1");
  NamedTensors ts = sample_tensors();
  write_safetensors_dir(dir, ts, 1 << 20, {{"format", "pt"}});
  EXPECT_EQ(dir_listing(dir), std::vector<std::string>{"model.safetensors"});
  SafetensorsReader r = SafetensorsReader::open(dir);
  expect_same(r, ts);
  EXPECT_EQ(r.metadata().at("format"), "pt");
}

TEST(Safetensors, DirectorySharded) {
  std::string dir = skytest::temp_dir("st-shard");
  // 200-byte tensors (50 F32) with a 450-byte limit: greedy gives [a b] [c d] [e].
  NamedTensors ts;
  for (int i = 0; i < 5; i++) ts.push_back({std::string(1, char('a' + i)), random_tensor(DType::F32, {5, 10}, 10 + i)});
  ts.push_back({"big", random_tensor(DType::BF16, {500}, 20)});   // 1000 bytes > limit: its own shard
  ts.push_back({"tail", random_tensor(DType::F8_E5M2, {3}, 21)});
  write_safetensors_dir(dir, ts, 450, {{"format", "pt"}});

  EXPECT_EQ(dir_listing(dir), (std::vector<std::string>{
                                  "model-00001-of-00005.safetensors", "model-00002-of-00005.safetensors",
                                  "model-00003-of-00005.safetensors", "model-00004-of-00005.safetensors",
                                  "model-00005-of-00005.safetensors", "model.safetensors.index.json"}));
  json idx = json::parse(read_all(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(idx["metadata"]["total_size"].get<uint64_t>(), 5 * 200 + 1000 + 3u);
  std::map<std::string, std::string> expect_map{
      {"a", "model-00001-of-00005.safetensors"}, {"b", "model-00001-of-00005.safetensors"},
      {"c", "model-00002-of-00005.safetensors"}, {"d", "model-00002-of-00005.safetensors"},
      {"e", "model-00003-of-00005.safetensors"}, {"big", "model-00004-of-00005.safetensors"},
      {"tail", "model-00005-of-00005.safetensors"}};
  EXPECT_EQ(idx["weight_map"].get<decltype(expect_map)>(), expect_map);

  SafetensorsReader r = SafetensorsReader::open(dir);
  expect_same(r, ts);
  EXPECT_EQ(r.info("c").file, dir + "/model-00002-of-00005.safetensors");
  EXPECT_EQ(r.metadata().at("format"), "pt");
  EXPECT_EQ(r.metadata().at("total_size"), "2003");
  // Each shard is a valid safetensors file on its own.
  SafetensorsReader s = SafetensorsReader::open(dir + "/model-00002-of-00005.safetensors");
  EXPECT_EQ(s.names(), (std::vector<std::string>{"c", "d"}));
}

TEST(Safetensors, RewritingDirectoryRemovesStaleLayout) {
  std::string dir = skytest::temp_dir("st-stale");
  NamedTensors ts;
  for (int i = 0; i < 4; i++) ts.push_back({"t" + std::to_string(i), random_tensor(DType::F32, {25}, 30 + i)});
  write_safetensors_dir(dir, ts, 100);  // 4 shards
  EXPECT_EQ(dir_listing(dir).size(), 5u);
  write_safetensors_dir(dir, ts, 200);  // 2 shards: the 4-shard files must go
  EXPECT_EQ(dir_listing(dir), (std::vector<std::string>{"model-00001-of-00002.safetensors",
                                                        "model-00002-of-00002.safetensors",
                                                        "model.safetensors.index.json"}));
  expect_same(SafetensorsReader::open(dir), ts);
  write_safetensors_dir(dir, ts, 1000);  // single file: shards and index go
  EXPECT_EQ(dir_listing(dir), std::vector<std::string>{"model.safetensors"});
  expect_same(SafetensorsReader::open(dir), ts);
  write_safetensors_dir(dir, ts, 300);  // back to shards: model.safetensors goes
  EXPECT_EQ(dir_listing(dir).size(), 3u);
  expect_same(SafetensorsReader::open(dir), ts);
}

// A file written without our writer: unpadded header, keys in arbitrary order, F32 data at an
// odd offset, values checked against known encodings.
TEST(Safetensors, ReadsHandWrittenFile) {
  std::string path = skytest::temp_dir("st-hand") + "/hand.safetensors";
  std::string data;
  data += std::string("\x00\x3c\x00\xc0\x00\x38", 6);           // F16 [1, -2, 0.5] at [0, 6)
  data += std::string("\x38", 1);                                // F8_E4M3 1.0 at [6, 7)
  float f[2] = {3.5f, -0.25f};
  data += std::string(reinterpret_cast<const char*>(f), 8);      // F32 at [7, 15): unaligned
  data += std::string("\x80\x3f", 2);                            // BF16 1.0 at [15, 17)
  std::string header =
      R"({"w":{"shape":[2],"data_offsets":[7,15],"dtype":"F32"},)"
      R"("__metadata__":{"k":"v"},)"
      R"( "h" : {"dtype":"F16","shape":[3],"data_offsets":[0,6]},)"
      R"("b":{"dtype":"BF16","shape":[1,1],"data_offsets":[15,17]},"e":{"dtype":"F8_E4M3","shape":[],"data_offsets":[6,7]}})";
  ASSERT_NE(header.size() % 8, 0u);
  write_all(path, raw_file(header, data));

  SafetensorsReader r = SafetensorsReader::open(path);
  EXPECT_EQ(r.names(), (std::vector<std::string>{"b", "e", "h", "w"}));
  EXPECT_EQ(r.metadata(), (std::map<std::string, std::string>{{"k", "v"}}));
  EXPECT_EQ(r.info("w").offset, 8 + header.size() + 7);
  Tensor h = r.get("h").to_f32();
  EXPECT_EQ(h.f32()[0], 1.0f);
  EXPECT_EQ(h.f32()[1], -2.0f);
  EXPECT_EQ(h.f32()[2], 0.5f);
  Tensor w = r.get_checked("w", {2}).to_f32();
  EXPECT_EQ(w.f32()[0], 3.5f);
  EXPECT_EQ(w.f32()[1], -0.25f);
  EXPECT_EQ(r.get("e").to_f32().f32()[0], 1.0f);
  EXPECT_EQ(r.get("b").to_f32().f32()[0], 1.0f);
  EXPECT_EQ(r.get("b").shape, (Shape{1, 1}));
  EXPECT_TRUE(r.get("e").shape.empty());
}

TEST(Safetensors, TensorOutlivesReader) {
  std::string path = skytest::temp_dir("st-life") + "/w.safetensors";
  NamedTensors ts = sample_tensors();
  write_safetensors(path, ts);
  Tensor t;
  {
    SafetensorsReader r = SafetensorsReader::open(path);
    t = r.get("embed.weight");
  }
  fs::remove(path);  // the mapping keeps the bytes even without the file
  ASSERT_EQ(t.nbytes(), ts[0].second.nbytes());
  EXPECT_EQ(std::memcmp(t.data, ts[0].second.data, t.nbytes()), 0);
}

TEST(Safetensors, GetCheckedNamesShapes) {
  std::string path = skytest::temp_dir("st-chk") + "/w.safetensors";
  write_safetensors(path, {{"m", random_tensor(DType::F32, {2, 3}, 1)}});
  SafetensorsReader r = SafetensorsReader::open(path);
  EXPECT_EQ(r.get_checked("m", {2, 3}).shape, (Shape{2, 3}));
  expect_error([&] { r.get_checked("m", {3, 2}); },
               {"tensor 'm' in " + path + " has shape [2, 3], expected [3, 2]"});
  expect_error([&] { r.info("nope"); }, {"'nope'", path});
  expect_error([&] { r.get("nope"); }, {"'nope'", path});
}

// ---- bad input ----

TEST(SafetensorsBad, MissingFile) {
  std::string path = skytest::temp_dir("st-miss") + "/absent.safetensors";
  expect_error([&] { SafetensorsReader::open(path); }, {path});
}

TEST(SafetensorsBad, DirectoryWithoutWeights) {
  std::string dir = skytest::temp_dir("st-emptydir");
  expect_error([&] { SafetensorsReader::open(dir); }, {dir, "model.safetensors"});
}

TEST(SafetensorsBad, ShorterThanEightBytes) {
  std::string path = skytest::temp_dir("st-short") + "/short.safetensors";
  write_all(path, std::string("\x05\x00\x00", 3));
  expect_error([&] { SafetensorsReader::open(path); }, {path, "3 bytes"});
  write_all(path, "");
  expect_error([&] { SafetensorsReader::open(path); }, {path, "0 bytes"});
}

TEST(SafetensorsBad, HeaderLongerThanFile) {
  std::string path = skytest::temp_dir("st-long") + "/long.safetensors";
  write_all(path, le64(100) + "{}");
  expect_error([&] { SafetensorsReader::open(path); }, {path, "header length 100 exceeds"});
}

TEST(SafetensorsBad, AbsurdHeaderLength) {
  std::string path = skytest::temp_dir("st-absurd") + "/absurd.safetensors";
  write_all(path, le64(uint64_t(1) << 40) + "{}");
  expect_error([&] { SafetensorsReader::open(path); }, {path, "absurd"});
  write_all(path, le64(~uint64_t(0)) + "{}");  // must not wrap around when adding 8
  expect_error([&] { SafetensorsReader::open(path); }, {path, "absurd"});
}

TEST(SafetensorsBad, HeaderNotJson) {
  expect_bad_file(R"({"a": {"dtype": "F32", )", "", {"not valid JSON"});
  expect_bad_file("", "", {"not valid JSON"});
}

// Nesting is bounded while parsing: a header nested 100k levels deep once overflowed the stack when
// an error message dumped it.
TEST(SafetensorsBad, DeepNesting) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  expect_bad_file(R"({"__metadata__": )" + deep + "}", "", {"nested deeper than 64 levels"});
  expect_bad_file(R"({"a": )" + deep + "}", "", {"nested deeper than 64 levels"});
}

TEST(SafetensorsBad, HeaderNotObject) {
  expect_bad_file("[1, 2]", "", {"not a JSON object"});
  expect_bad_file(R"({"a": 5})", "", {"'a'", "not an object"});
}

TEST(SafetensorsBad, DuplicateKey) {
  expect_bad_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                  std::string(8, '\1'), {"'a' twice"});
}

TEST(SafetensorsBad, UnknownDtype) {
  expect_bad_file(R"({"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", std::string(8, '\1'),
                  {"'x'", "unknown dtype 'F64'"});
  expect_bad_file(R"({"x":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\1'), {"'x'", "dtype"});
  expect_bad_file(R"({"x":{"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\1'),
                  {"'x'", "missing field 'dtype'"});
}

TEST(SafetensorsBad, BadShape) {
  const std::string data(16, '\1');
  for (const char* shape : {"[-1, 4]", "[2.0, 2]", "\"4\"", "[[4]]", "4", "[1, null]", "[99999999999999999999]"}) {
    SCOPED_TRACE(shape);
    expect_bad_file(std::string(R"({"bad_shape":{"dtype":"F32","shape":)") + shape + R"(,"data_offsets":[0,16]}})",
                    data, {"'bad_shape'", "shape"});
  }
}

TEST(SafetensorsBad, BadDataOffsets) {
  const std::string data(16, '\1');
  for (const char* offs : {"[0]", "[0, 4, 8]", "[-4, 0]", "[0, 4.0]", "\"0,4\"", "[8, 4]"}) {
    SCOPED_TRACE(offs);
    expect_bad_file(std::string(R"({"off":{"dtype":"F32","shape":[1],"data_offsets":)") + offs + "}}", data,
                    {"'off'", "data_offsets"});
  }
  expect_bad_file(R"({"off":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", data, {"begin > end"});
}

TEST(SafetensorsBad, EndBeyondData) {
  expect_bad_file(R"({"far":{"dtype":"F32","shape":[4],"data_offsets":[4,20]}})", std::string(16, '\1'),
                  {"'far'", "past the data section (16 bytes)"});
}

TEST(SafetensorsBad, ByteSizeMismatch) {
  expect_bad_file(R"({"sz":{"dtype":"BF16","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\1'),
                  {"'sz'", "span 8 bytes", "needs 6"});
  // numel * size overflowing 64 bits must not wrap to a small matching number.
  expect_bad_file(R"({"huge":{"dtype":"F32","shape":[4611686018427387904, 4],"data_offsets":[0,0]}})", "",
                  {"'huge'", "more than 2^64"});
  // Empty, but Tensor::numel() multiplies in order: 2^62 * 2^62 overflowed int64 before the 0
  // (undefined behaviour, found by fuzz_safetensors under UBSan); such a file was accepted.
  expect_bad_file(R"({"empty":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904,0],)"
                  R"("data_offsets":[0,0]}})", "", {"'empty'", "more than 2^63 elements"});
}

TEST(SafetensorsBad, OverlappingTensors) {
  expect_bad_file(R"({"p":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("q":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                  std::string(12, '\1'), {"'p'", "'q'", "overlap"});
  // Empty tensors sit anywhere; a gap between tensors is tolerated.
  std::string path = skytest::temp_dir("st-ok") + "/ok.safetensors";
  write_all(path, raw_file(R"({"p":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                           R"("q":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
                           std::string(16, '\1')));
  EXPECT_EQ(SafetensorsReader::open(path).names().size(), 3u);
}

TEST(SafetensorsBad, BadMetadata) {
  expect_bad_file(R"({"__metadata__":{"n":3}})", "", {"__metadata__", "'n'"});
  expect_bad_file(R"({"__metadata__":[1]})", "", {"__metadata__"});
}

TEST(SafetensorsBad, IndexTensorAbsentFromShard) {
  std::string dir = skytest::temp_dir("st-idx1");
  write_safetensors(dir + "/s1.safetensors", {{"a", random_tensor(DType::F32, {2}, 1)}});
  write_text_atomic(dir + "/model.safetensors.index.json",
                    R"({"metadata":{},"weight_map":{"a":"s1.safetensors","ghost":"s1.safetensors"}})");
  expect_error([&] { SafetensorsReader::open(dir); }, {"'ghost'", dir + "/s1.safetensors"});
}

TEST(SafetensorsBad, IndexPointsToMissingShard) {
  std::string dir = skytest::temp_dir("st-idx2");
  write_safetensors(dir + "/s1.safetensors", {{"a", random_tensor(DType::F32, {2}, 1)}});
  write_text_atomic(dir + "/model.safetensors.index.json",
                    R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
  expect_error([&] { SafetensorsReader::open(dir); }, {dir + "/s2.safetensors", "'b'", "does not exist"});
}

TEST(SafetensorsBad, DuplicateTensorAcrossShards) {
  std::string dir = skytest::temp_dir("st-idx3");
  write_safetensors(dir + "/s1.safetensors", {{"a", random_tensor(DType::F32, {2}, 1)}});
  write_safetensors(dir + "/s2.safetensors",
                    {{"a", random_tensor(DType::F32, {2}, 2)}, {"b", random_tensor(DType::F32, {2}, 3)}});
  write_text_atomic(dir + "/model.safetensors.index.json",
                    R"({"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
  expect_error([&] { SafetensorsReader::open(dir); },
               {"'a'", dir + "/s1.safetensors", dir + "/s2.safetensors"});
}

TEST(SafetensorsBad, MalformedIndex) {
  std::string dir = skytest::temp_dir("st-idx4");
  std::string index = dir + "/model.safetensors.index.json";
  write_text_atomic(index, "{\"weight_map\": ");
  expect_error([&] { SafetensorsReader::open(dir); }, {index, "JSON"});
  write_text_atomic(index, R"({"metadata":{}})");
  expect_error([&] { SafetensorsReader::open(dir); }, {index, "weight_map"});
  write_text_atomic(index, R"({"weight_map":{"a":7}})");
  expect_error([&] { SafetensorsReader::open(dir); }, {index, "'a'"});
  write_text_atomic(index, R"({"weight_map":{"a":"../elsewhere.safetensors"}})");
  expect_error([&] { SafetensorsReader::open(dir); }, {index, "'a'", "plain file name"});
}

TEST(SafetensorsBad, BothLayoutsPresent) {
  std::string dir = skytest::temp_dir("st-both");
  write_safetensors(dir + "/model.safetensors", {{"a", random_tensor(DType::F32, {2}, 1)}});
  write_text_atomic(dir + "/model.safetensors.index.json", R"({"weight_map":{"a":"model.safetensors"}})");
  expect_error([&] { SafetensorsReader::open(dir); }, {dir, "both"});
}

TEST(SafetensorsBad, ErrorInShardNamesShard) {
  std::string dir = skytest::temp_dir("st-idx5");
  write_all(dir + "/s1.safetensors", raw_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                                              std::string(8, '\1')));
  write_text_atomic(dir + "/model.safetensors.index.json", R"({"weight_map":{"a":"s1.safetensors"}})");
  expect_error([&] { SafetensorsReader::open(dir); }, {dir + "/s1.safetensors", "'a'"});
}

// ---- writer and atomic files ----

TEST(SafetensorsWrite, RejectsBadTensorLists) {
  std::string path = skytest::temp_dir("st-wbad") + "/w.safetensors";
  Tensor t = random_tensor(DType::F32, {2}, 1);
  expect_error([&] { write_safetensors(path, {{"a", t}, {"a", t}}); }, {path, "'a'"});
  expect_error([&] { write_safetensors(path, {{"__metadata__", t}}); }, {path, "__metadata__"});
  Tensor hollow;
  hollow.shape = {4};
  expect_error([&] { write_safetensors(path, {{"h", hollow}}); }, {path, "'h'"});
  EXPECT_FALSE(fs::exists(path));
}

TEST(AtomicFile, WriteIntoMissingDirectoryThrows) {
  std::string path = skytest::temp_dir("af-miss") + "/no/such/dir/w.safetensors";
  expect_error([&] { write_safetensors(path, {{"a", random_tensor(DType::F32, {2}, 1)}}); }, {path});
  expect_error([&] { write_text_atomic(path, "x"); }, {path});
}

TEST(AtomicFile, OverwriteReplacesContent) {
  std::string dir = skytest::temp_dir("af-over");
  std::string path = dir + "/w.safetensors";
  write_safetensors(path, {{"a", random_tensor(DType::F32, {2}, 1)}});
  NamedTensors second{{"b", random_tensor(DType::BF16, {3}, 2)}};
  write_safetensors(path, second);
  expect_same(SafetensorsReader::open(path), second);
  write_text_atomic(dir + "/t.json", "first");
  write_text_atomic(dir + "/t.json", "second");
  EXPECT_EQ(read_all(dir + "/t.json"), "second");
  EXPECT_EQ(dir_listing(dir), (std::vector<std::string>{"t.json", "w.safetensors"}));  // no temp files left
}

TEST(AtomicFile, FailedWriteKeepsPreviousFile) {
  std::string dir = skytest::temp_dir("af-fail");
  std::string path = dir + "/state.json";
  write_text_atomic(path, "old");
  // The body fails halfway: its exception passes through, the old file stays, the temp file goes.
  EXPECT_THROW(write_file_atomic(path,
                                 [](std::FILE* f) {
                                   std::fputs("partial", f);
                                   throw std::runtime_error("boom");
                                 }),
               std::runtime_error);
  EXPECT_EQ(read_all(path), "old");
  EXPECT_EQ(dir_listing(dir), std::vector<std::string>{"state.json"});

  // The rename fails (the target is a non-empty directory): an Error naming it, no temp left.
  std::string blocked = dir + "/blocked";
  fs::create_directories(blocked + "/inner");
  expect_error([&] { write_text_atomic(blocked, "x"); }, {blocked, "rename"});
  EXPECT_EQ(dir_listing(dir), (std::vector<std::string>{"blocked", "state.json"}));
}
