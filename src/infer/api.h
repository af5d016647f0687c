#pragma once
// The OpenAI-compatible JSON of `skymoe serve`: request parsing and validation, the chat template
// for base models, and the response and stream-chunk bodies. Every problem with a request becomes
// an ApiError carrying the HTTP status and the fields of OpenAI's {"error": {...}} body.
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "infer/engine.h"
#include "infer/output_text.h"
#include "io/tokenizer.h"

namespace sky {

class ChatTemplate;  // io/chat_template.h

struct ApiError : std::runtime_error {
  int status;
  std::string type, param, code;  // param / code empty -> null in the body
  ApiError(int status, const std::string& message, std::string param = "", std::string code = "");
};

nlohmann::json error_body(const ApiError& e);
// Serializes without ever throwing: invalid UTF-8 becomes U+FFFD.
std::string dump_json(const nlohmann::json& j);
// The request body as a JSON object (malformed JSON, invalid UTF-8 or a non-object -> 400).
nlohmann::json parse_json_body(const std::string& body);

// What the server allows a request; the parser checks against these.
struct ApiLimits {
  std::string model_name;
  const Tokenizer* tok = nullptr;  // null: the model has no tokenizer (token-id prompts only)
  std::string no_tokenizer_hint;   // appended to the "no tokenizer" error
  int vocab_size = 0;
  int context = 0;            // positions per request: min(max_position_embeddings, KV budget)
  int max_prompt_tokens = 0;  // <= context - 1
  int max_tokens_limit = 0;
  bool add_bos = true;        // text prompts start with the tokenizer's bos
  // Tests: sees the size of every text handed to the tokenizer.
  std::function<void(size_t bytes)> on_encode;
  // The model's chat template; null: the plain template below. Chat prompts then come from the
  // template (with its own bos; add_bos does not apply) and stop at its end of turn.
  const ChatTemplate* chat_template = nullptr;
};

struct GenRequest {
  bool chat = false, stream = false, include_usage = false;
  // echo: the completion's text starts with the prompt's (and, with logprobs, its log-probabilities
  // start with the prompt tokens'). logprobs: per-token log-probabilities in the response, with
  // top_logprobs alternatives (completions' "logprobs": N, chat's "logprobs" + "top_logprobs").
  bool echo = false, logprobs = false;
  int top_logprobs = 0;
  std::vector<int32_t> prompt;
  GenParams gen;
  std::vector<std::string> stop;  // text-level; chat adds kChatStop, or the template's stop strings
  // Chat with a template: end-of-turn special tokens to stop at by id (a control token decodes to
  // no text, so no stop string can see it); the token itself is not part of the reply.
  std::vector<int32_t> stop_ids;
};

GenRequest parse_completion_request(const nlohmann::json& body, const ApiLimits& lim);
GenRequest parse_chat_request(const nlohmann::json& body, const ApiLimits& lim);

// Chat template for base models: one "Role: content" line per message, then "Assistant:" for the
// model to continue; generation stops where the model starts the user's next turn.
struct ChatMessage {
  std::string role, content;  // role: system | user | assistant
};
std::string chat_prompt(const std::vector<ChatMessage>& messages);
inline const char* const kChatStop = "\nUser:";

// Response bodies. `ids` (the generated token ids) is set only when the server has no tokenizer:
// then "text" is empty and the ids come as the extension field "token_ids".
struct ResponseMeta {
  std::string id, model;
  int64_t created = 0;
  bool chat = false;
};
// `logprobs` is the choice's "logprobs" field: null, or what logprobs_json made.
nlohmann::json usage_json(int prompt_tokens, int completion_tokens);
nlohmann::json completion_body(const ResponseMeta& m, const std::string& text, const std::vector<int32_t>* ids,
                               const std::string& finish_reason, int prompt_tokens, int completion_tokens,
                               const nlohmann::json& logprobs = nullptr);
// One streamed chunk: a text delta, or (finish_reason non-empty) the closing chunk. role: chat's
// first chunk, which announces the assistant.
nlohmann::json chunk_body(const ResponseMeta& m, const std::string& text, const std::vector<int32_t>* ids,
                          const std::string& finish_reason, bool role = false, const nlohmann::json& logprobs = nullptr);

// Per-token log-probabilities in OpenAI's shapes. Completions (legacy): {"tokens", "token_logprobs",
// "top_logprobs" (a {token: logprob} object holding the top alternatives and the chosen token),
// "text_offset"}, null entries for an unscored first prompt token. Chat: {"content": [{"token",
// "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}. A token's text is its
// characters; a piece holding part of a UTF-8 character reads "bytes:\xNN" (OpenAI's form),
// and without a tokenizer every token reads "token_id:N" (vLLM's).
nlohmann::json logprobs_json(bool chat, const Tokenizer* tok, const std::vector<ShownLogprob>& lps);

}  // namespace sky
