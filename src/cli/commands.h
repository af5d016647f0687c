#pragma once
// Each subcommand lives in its own file and receives argv starting at its own name.
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

namespace sky::cli {

int cmd_init(int argc, char** argv);
int cmd_info(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_generate(int argc, char** argv);
int cmd_train(int argc, char** argv);
int cmd_upcycle(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_quantize(int argc, char** argv);
int cmd_export(int argc, char** argv);
int cmd_serve(int argc, char** argv);
int cmd_tokenize(int argc, char** argv);
int cmd_quickstart(int argc, char** argv);
int cmd_plan(int argc, char** argv);

// Parses argv into `app`; returns -1 to continue, or the exit code (help printed, or a usage error).
int parse(CLI::App& app, int argc, char** argv);

// Option checks. CLI11 2.1's PositiveNumber / NonNegativeNumber are double ranges whose message
// reads "Value 0 not in range 0.000000 to 1797693...(300 digits)", and call "abc" out of range;
// these say what the flag wants ("--seq-len: must be a positive integer, got '0'").
CLI::Validator positive_int();
CLI::Validator non_negative_int();
CLI::Validator positive_number();

// "1,5,9" -> {1, 5, 9}; throws naming the bad item.
std::vector<int32_t> parse_id_list(const std::string& s, const char* flag);

}  // namespace sky::cli
