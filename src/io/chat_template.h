#pragma once
// A model's chat template: Hugging Face's Jinja template that turns a conversation into the prompt
// text the model was trained on, loaded from the model directory and rendered as transformers'
// apply_chat_template does (io/jinja). Also what ends the assistant's turn (stop strings) and how
// the rendered text becomes token ids (special tokens written in it become their ids).
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "io/jinja/template.h"

namespace sky {

class Tokenizer;

struct ChatTokens {
  // tokenizer_config.json's bos_token / eos_token / unk_token / pad_token; unset ones are undefined
  // in the template (as in transformers, where they are missing from special_tokens_map).
  std::optional<std::string> bos, eos, unk, pad;
  // added_tokens_decoder: text of each added token -> its id.
  std::vector<std::pair<std::string, int32_t>> added;
};

class ChatTemplate {
 public:
  // DIR/chat_template.jinja when present (it takes precedence, as in transformers), else
  // DIR/tokenizer_config.json's "chat_template": a string, or a list of {"name", "template"} of
  // which the one named "default" is used. Special tokens come from tokenizer_config.json (or
  // special_tokens_map.json). nullopt when there is no template; sky::Error naming the file for a
  // malformed file or a template with a syntax error.
  // A GGUF file instead of DIR: its tokenizer.chat_template, special tokens from tokenizer.ggml.*.
  static std::optional<ChatTemplate> from_model_dir(const std::string& dir);

  // `origin` names the template in error messages (e.g. its file).
  ChatTemplate(std::string_view source, std::string origin, ChatTokens tokens = {});

  // The prompt for `messages` (a JSON array of {"role", "content", ...}, passed to the template as
  // is: content may be a string or a list of parts, as the template expects). add_generation_prompt:
  // end with the header of an assistant turn for the model to complete. `extra`: more top-level
  // variables (a JSON object, e.g. {"tools": [...], "enable_thinking": false}) or null; `tools` and
  // `documents` are none unless given there. The ordered_json overload keeps key order (it shows
  // in `tojson` output). Throws jinja::TemplateError (a sky::Error) for raise_exception and
  // runtime errors: "<origin>, line N: <message>". Safe to call from several threads at once.
  std::string render(const nlohmann::json& messages, bool add_generation_prompt,
                     const nlohmann::json& extra = nullptr) const;
  std::string render(const nlohmann::ordered_json& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra = nullptr) const;

  // Where the assistant's turn ends, in the order to check: the text the template writes right
  // after an assistant message's content (rendering [user, assistant] without a generation prompt),
  // with surrounding whitespace trimmed, when not empty (Qwen's "<|im_end|>", Llama 3's
  // "<|eot_id|>"); then the eos token. A template that fails on that probe, or alters the content,
  // gives the eos token alone.
  const std::vector<std::string>& stop_strings() const { return stops_; }

  // A rendered prompt as ids: each special token written in the text (an added token, or the
  // tokenizer's bos/eos piece) becomes its id, longest match first, and the text between goes
  // through the tokenizer. No bos is added: templates write their own.
  std::vector<int32_t> encode(const Tokenizer& tok, std::string_view text) const;
  // A lower bound on encode(tok, text).size() without encoding (Tokenizer::min_tokens between the
  // special tokens): a server refuses a prompt that is surely too long before tokenizing it.
  int64_t min_tokens(const Tokenizer& tok, std::string_view text) const;
  // The ids of the stop strings that are one special token: a SentencePiece control token decodes
  // to no text, so generation has to stop on its id.
  std::vector<int32_t> stop_token_ids(const Tokenizer& tok) const;

  const std::string& origin() const { return tpl_.name(); }
  const std::string& source() const { return source_; }  // the template's text (GGUF export writes it)
  const ChatTokens& tokens() const { return tokens_; }

 private:
  template <class J>
  std::string render_json(const J& messages, bool add_generation_prompt, const J& extra) const;
  std::vector<std::pair<std::string, int32_t>> specials(const Tokenizer& tok) const;

  std::string source_;
  jinja::Template tpl_;
  ChatTokens tokens_;
  std::vector<std::string> stops_;
};

}  // namespace sky
