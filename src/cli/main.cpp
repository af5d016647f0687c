// skymoe: one binary, one subcommand per file (see commands.h).
#include <cstdio>
#include <cstring>
#include <string>

#include "cli/commands.h"
#include "core/error.h"

namespace sky::cli {

int parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return -1;
}

std::vector<int32_t> parse_id_list(const std::string& s, const char* flag) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i <= s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    std::string item = s.substr(i, j - i);
    char* end = nullptr;
    long v = std::strtol(item.c_str(), &end, 10);
    SKY_CHECK(!item.empty() && *end == 0 && v >= 0 && v <= INT32_MAX, "{}: '{}' is not a non-negative token id",
              flag, item);
    ids.push_back(int32_t(v));
    i = j + 1;
  }
  return ids;
}

}  // namespace sky::cli

namespace {

struct Command {
  const char* name;
  int (*fn)(int, char**);
  const char* help;
};

const Command kCommands[] = {
    {"init", sky::cli::cmd_init, "create a randomly initialized model (HF layout) from a preset or config"},
    {"info", sky::cli::cmd_info, "print a model's config, parameter counts and tensor table"},
    {"eval", sky::cli::cmd_eval, "mean next-token cross-entropy of a model on a token file"},
    {"generate", sky::cli::cmd_generate, "generate tokens from a prompt with a KV cache"},
    {"upcycle", sky::cli::cmd_upcycle, "turn a dense checkpoint into an MoE (experts copy the dense FFN)"},
    {"train", sky::cli::cmd_train, "train a dense or MoE model (adaptive aux loss, checkpoints, resume)"},
    {"tokenize", sky::cli::cmd_tokenize, "text files -> token file (load or train a SentencePiece tokenizer)"},
    {"quickstart", sky::cli::cmd_quickstart, "end-to-end demo: dense -> upcycled MoE vs MoE from scratch, HTML report"},
};

void usage() {
  std::printf("skymoe: a native engine for Mixture-of-Experts language models\n\nusage: skymoe <command> [options]\n\ncommands:\n");
  for (auto& c : kCommands) std::printf("  %-11s %s\n", c.name, c.help);
  std::printf("\nRun `skymoe <command> --help` for a command's options.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    usage();
    return argc < 2 ? 1 : 0;
  }
  for (auto& c : kCommands) {
    if (std::strcmp(argv[1], c.name)) continue;
    try {
      return c.fn(argc - 1, argv + 1);
    } catch (const sky::Error& e) {
      std::fprintf(stderr, "skymoe %s: error: %s\n", c.name, e.what());
      return 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "skymoe %s: error: %s\n", c.name, e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "skymoe: unknown command '%s'\n\n", argv[1]);
  usage();
  return 2;
}
