#pragma once
// Helpers for the libFuzzer targets: parsers that take a path get the input as a file without
// touching the disk, and a target splits one input into several files.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace fuzz {

// A finding that no sanitizer sees (a broken invariant): print it and abort, which libFuzzer
// reports as a crash and saves the input.
#define FUZZ_CHECK(cond, ...)                                              \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "FUZZ_CHECK failed: %s: ", #cond);              \
      std::fprintf(stderr, __VA_ARGS__);                                   \
      std::fprintf(stderr, "\n");                                          \
      std::abort();                                                        \
    }                                                                      \
  } while (0)

// One in-memory file (memfd), rewritten for each input and opened by the parser through
// /proc/self/fd like any regular file: no disk I/O, nothing left behind.
class MemFile {
 public:
  MemFile() : fd_(::memfd_create("fuzz-input", MFD_CLOEXEC)) {
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  const std::string& write(const void* data, size_t n) {
    if (::ftruncate(fd_, 0) != 0 || (n > 0 && ::pwrite(fd_, data, n, 0) != ssize_t(n))) {
      std::perror("memfd write");
      std::abort();
    }
    return path_;
  }
  const std::string& path() const { return path_; }

 private:
  int fd_;
  std::string path_;
};

// A private directory for targets whose parser reads several files by name (a sharded model).
// Made once per process, in /dev/shm when there is one (memory, not disk), removed at exit.
struct ScratchDir {
  std::string path;
  ScratchDir() {
    path = std::filesystem::is_directory("/dev/shm") ? "/dev/shm/skymoe-fuzz-XXXXXX" : "/tmp/skymoe-fuzz-XXXXXX";
    if (!::mkdtemp(path.data())) {
      std::perror("mkdtemp");
      std::abort();
    }
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};
inline const std::string& scratch_dir() {
  static ScratchDir dir;
  return dir.path;
}

// Empties the scratch directory and writes `files` (name, bytes) into it.
inline void write_files(const std::vector<std::pair<std::string, std::string_view>>& files) {
  const std::string& dir = scratch_dir();
  for (const auto& e : std::filesystem::directory_iterator(dir)) std::filesystem::remove(e.path());
  for (const auto& [name, bytes] : files) {
    std::FILE* f = std::fopen((dir + "/" + name).c_str(), "wb");
    if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0) {
      std::perror("write scratch file");
      std::abort();
    }
  }
}

// Splits the input at each occurrence of `sep` (at most max_parts parts; the last keeps the rest).
inline std::vector<std::string_view> split(std::string_view in, std::string_view sep, size_t max_parts) {
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    const size_t at = in.find(sep);
    if (at == std::string_view::npos) break;
    parts.push_back(in.substr(0, at));
    in.remove_prefix(at + sep.size());
  }
  parts.push_back(in);
  return parts;
}

}  // namespace fuzz
