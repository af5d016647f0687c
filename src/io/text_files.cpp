#include "io/text_files.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"

namespace sky {

namespace fs = std::filesystem;

static bool looks_binary(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  char buf[8192];
  in.read(buf, sizeof buf);
  return std::find(buf, buf + in.gcount(), '\0') != buf + in.gcount();
}

static std::string canonical_or_self(const fs::path& p) {
  std::error_code ec;
  fs::path c = fs::canonical(p, ec);
  return ec ? p.string() : c.string();
}

TextFileList expand_text_inputs(const std::vector<std::string>& inputs, const char* flag) {
  SKY_CHECK(!inputs.empty(), "{}: no input given", flag);
  TextFileList out;
  std::set<std::string> seen;  // canonical paths already in the list
  for (const std::string& in : inputs) {
    std::error_code ec;
    fs::file_status st = fs::status(in, ec);
    SKY_CHECK(fs::exists(st), "{}: {} does not exist", flag, in);
    if (!fs::is_directory(st)) {
      SKY_CHECK(fs::is_regular_file(st), "{}: {} is not a regular file or a directory", flag, in);
      out.files.push_back(in);
      seen.insert(canonical_or_self(in));
      continue;
    }
    std::vector<fs::directory_entry> entries;
    for (const auto& e : fs::directory_iterator(in, ec)) entries.push_back(e);
    SKY_CHECK(!ec, "{}: cannot list directory {}: {}", flag, in, ec.message());
    std::sort(entries.begin(), entries.end(), [](auto& a, auto& b) { return a.path().filename() < b.path().filename(); });
    // Real files first, so a symlink loses to its target whichever name sorts first.
    std::vector<std::string> picked;
    for (int pass = 0; pass < 2; pass++) {
      for (const auto& e : entries) {
        const bool link = e.is_symlink(ec);
        if (link != (pass == 1)) continue;
        const std::string name = e.path().filename().string();
        if (name.empty() || name[0] == '.') continue;
        if (!e.is_regular_file(ec)) continue;  // follows symlinks; skips subdirectories and devices
        const std::string canon = canonical_or_self(e.path());
        if (seen.count(canon)) {
          out.skipped.push_back(e.path().string() + " (duplicate of a file already listed)");
          continue;
        }
        if (looks_binary(e.path())) {
          out.skipped.push_back(e.path().string() + " (binary)");
          continue;
        }
        seen.insert(canon);
        picked.push_back(e.path().string());
      }
    }
    SKY_CHECK(!picked.empty(), "{}: directory {} holds no text files", flag, in);
    std::sort(picked.begin(), picked.end());
    out.files.insert(out.files.end(), picked.begin(), picked.end());
  }
  return out;
}

}  // namespace sky
