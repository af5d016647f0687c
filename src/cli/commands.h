#pragma once
// Each subcommand lives in its own file and receives argv starting at its own name.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "infer/infer_model.h"
#include "infer/tp.h"

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
int cmd_plan_inference(int argc, char** argv);  // `skymoe plan --inference`
int cmd_chat_template(int argc, char** argv);

// `export gguf` and `quantize --to q8_0|q6_k|q4_k_m` (cli/cmd_export.cpp): writes `model` (a
// directory or a .gguf file, read one layer at a time) as a GGUF file of file type `type`, with the
// vocabulary from `tokenizer` (default: the model's own), and prints the report line.
int write_gguf(const std::string& model, const std::string& out, const std::string& type, std::string tokenizer,
               bool no_tokenizer, std::string name);

// A conversation file for chat-template and generate --chat: a JSON array of messages, or an
// object {"messages": [...], ...} whose other keys go to *extra (template variables). Key order kept.
nlohmann::ordered_json read_conversation(const std::string& path, nlohmann::ordered_json* extra);

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

// --device cpu|ref (backend/backend.h): where the model computes. Checked by backend().
void add_device_flag(CLI::App& app, std::string& device);

// Multi-process inference (generate, serve, bench infer under mpirun; infer/tp.h).
struct TpFlags {
  int tp = 0;  // 0: the number of processes
  std::string shares;
  int ep = 1;
  double comm_timeout = 60;
};
void add_tp_flags(CLI::App& app, TpFlags& f);
// Checks the flags against the world size and `cfg` (before any weight is read), sets the collective
// timeout (rank 0 of a server throws instead of aborting, to answer its clients first), and returns
// this rank's shard with the options; `tp` gets the group (null in one process).
Shard tp_setup(const ModelConfig& cfg, const TpFlags& f, bool rank0_throws, std::shared_ptr<TpGroup>& tp);
// InferModel::load of this rank's shard (the whole model in one process).
// --lm-head auto|f32|bf16|fp8 for the inference commands (InferLoadOptions::lm_head).
void add_lm_head_flag(CLI::App& app, std::string& lm_head);
// --kv-dtype f32|bf16 (InferLoadOptions::kv_dtype).
void add_kv_dtype_flag(CLI::App& app, std::string& kv_dtype);
InferModel load_infer_model(const std::string& dir, const InferLoadOptions& o, const TpFlags& f, bool rank0_throws = false);

}  // namespace sky::cli
