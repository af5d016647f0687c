// skymoe: one binary, one subcommand per file (see commands.h).
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "dist/communicator.h"

namespace sky::cli {

int parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return -1;
}

namespace {

// A validator accepting a whole-string number (parsed by `parse`) for which `ok` holds.
template <class Parse, class Ok>
CLI::Validator number_check(const char* want, const char* tag, Parse parse, Ok ok) {
  return CLI::Validator(
      [=](std::string& s) -> std::string {
        errno = 0;
        char* end = nullptr;
        auto v = parse(s.c_str(), &end);
        if (s.empty() || *end != 0 || errno == ERANGE || !ok(v)) return std::string("must be ") + want + ", got '" + s + "'";
        return "";
      },
      tag);
}

}  // namespace

CLI::Validator positive_int() {
  return number_check("a positive integer", "POSITIVE", [](const char* s, char** e) { return std::strtoll(s, e, 10); },
                      [](long long v) { return v > 0 && v <= INT32_MAX; });
}

CLI::Validator non_negative_int() {
  return number_check("a non-negative integer", "NONNEGATIVE",
                      [](const char* s, char** e) { return std::strtoll(s, e, 10); },
                      [](long long v) { return v >= 0 && v <= INT32_MAX; });
}

CLI::Validator positive_number() {
  return number_check("a positive number", "POSITIVE", [](const char* s, char** e) { return std::strtod(s, e); },
                      [](double v) { return std::isfinite(v) && v > 0; });
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
    {"chat-template", sky::cli::cmd_chat_template, "render a conversation with the model's chat template"},
    {"upcycle", sky::cli::cmd_upcycle, "turn a dense checkpoint into an MoE (experts copy the dense FFN)"},
    {"quantize", sky::cli::cmd_quantize, "quantize a checkpoint's linear layers to fp8 (with scales) or bf16"},
    {"export", sky::cli::cmd_export, "export a model to another format (export gguf: llama.cpp)"},
    {"bench", sky::cli::cmd_bench, "benchmarks (bench train: training tokens/s)"},
    {"serve", sky::cli::cmd_serve, "OpenAI-compatible HTTP server (completions, chat, streaming, metrics)"},
    {"train", sky::cli::cmd_train, "train a dense or MoE model (adaptive aux loss, checkpoints, resume)"},
    {"tokenize", sky::cli::cmd_tokenize, "text files -> token file (load or train a SentencePiece tokenizer)"},
    {"quickstart", sky::cli::cmd_quickstart, "end-to-end demo: dense -> upcycled MoE vs MoE from scratch, HTML report"},
    {"plan", sky::cli::cmd_plan, "plan a parallel layout: PP/TP/DP, expert layout, ZeRO, per-stage layers and recompute"},
};

void usage() {
  std::printf("skymoe: a native engine for Mixture-of-Experts language models\n\nusage: skymoe <command> [options]\n\ncommands:\n");
  for (auto& c : kCommands) std::printf("  %-14s %s\n", c.name, c.help);
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
      int rc = c.fn(argc - 1, argv + 1);
      sky::finalize_comm();
      return rc;
    } catch (const std::exception& e) {
      std::string msg = std::string("skymoe ") + c.name + ": error: " + e.what();
      // Under mpirun one failing rank must take the others down instead of leaving them waiting.
      if (sky::launched_by_mpi()) sky::abort_job(msg + " (aborting all ranks)");
      std::fprintf(stderr, "%s\n", msg.c_str());
      return 1;
    }
  }
  std::fprintf(stderr, "skymoe: unknown command '%s'\n\n", argv[1]);
  usage();
  return 2;
}
