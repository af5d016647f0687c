#pragma once
// Turning command-line corpus arguments (files and directories) into the list of text files to read.
#include <string>
#include <vector>

namespace sky {

struct TextFileList {
  std::vector<std::string> files;
  std::vector<std::string> skipped;  // directory entries left out, with the reason, for --verbose output
};

// Files are kept as given, in order. A directory contributes the regular files directly inside it,
// sorted by name, leaving out: hidden files, binary files (a NUL byte in the first 8 KiB, e.g. the
// strfile .dat indexes beside fortune files), and symlinks to a file that is already in the list
// (Debian's fortune.u8 -> fortune), so no text is read twice. Throws naming `flag` and the path when
// an argument does not exist or a directory holds no text file.
TextFileList expand_text_inputs(const std::vector<std::string>& inputs, const char* flag);

}  // namespace sky
