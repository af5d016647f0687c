#pragma once
// Crash-safe file replacement: readers see either the old file or the complete new one, never a
// half-written file. Used for weights, checkpoints and JSON state.
#include <cstdio>
#include <functional>
#include <string>

namespace sky {

// Calls body(f) on a fresh temporary file `path + ".tmp.<pid>"`, then flushes, fsyncs and renames
// it over `path` (and fsyncs the directory, best effort). The body may just fwrite: write errors
// are picked up afterwards through ferror/fflush. On any failure, including an exception from the
// body (which is rethrown as is), the temporary file is removed and `path` is left untouched;
// failures of our own throw sky::Error naming `path`. The pid suffix keeps processes apart; two
// threads of one process must not write the same path at once.
void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& body);

// write_file_atomic for a whole string.
void write_text_atomic(const std::string& path, const std::string& text);

}  // namespace sky
