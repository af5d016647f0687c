#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace sky {

// Makes the rename itself durable. Best effort: some filesystems refuse fsync on directories, and
// the data is already safe in the file, so a failure here is not worth failing the write.
static void sync_parent_dir(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& body) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail("cannot write {}: cannot create temporary file {}: {}", path, tmp, std::strerror(errno));

  auto discard = [&] {
    if (f) std::fclose(f);
    f = nullptr;
    std::remove(tmp.c_str());
  };
  auto fail_with_errno = [&](const char* what) {
    int err = errno;
    discard();
    fail("cannot write {}: {} failed: {}", path, what, err ? std::strerror(err) : "I/O error");
  };

  try {
    body(f);
  } catch (...) {
    discard();
    throw;
  }
  errno = 0;
  if (std::fflush(f) != 0 || std::ferror(f)) fail_with_errno("write");
  if (::fsync(::fileno(f)) != 0) fail_with_errno("fsync");
  int rc = std::fclose(f);
  f = nullptr;  // closed even when fclose reports an error
  if (rc != 0) fail_with_errno("close");
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail_with_errno("rename");
  sync_parent_dir(path);
}

void write_text_atomic(const std::string& path, const std::string& text) {
  write_file_atomic(path, [&](std::FILE* f) { std::fwrite(text.data(), 1, text.size(), f); });
}

}  // namespace sky
