#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/commands.h"
#include "core/error.h"
#include "backend/backend.h"
#include "infer/api.h"
#include "infer/engine.h"
#include "infer/output_text.h"
#include "io/chat_template.h"
#include "io/tokenizer.h"

namespace sky::cli {

namespace {

// The plain "Role: content" prompt (infer/api.h) of a conversation, for models without a template.
std::string plain_chat_prompt(const nlohmann::ordered_json& messages) {
  std::vector<ChatMessage> plain;
  for (size_t i = 0; i < messages.size(); i++) {
    const auto& m = messages[i];
    SKY_CHECK(m.is_object() && m.contains("role") && m["role"].is_string(), "messages[{}]: needs a string \"role\"", i);
    std::string role = m["role"].get<std::string>(), content;
    SKY_CHECK(role == "system" || role == "user" || role == "assistant",
              "messages[{}]: role '{}' needs a chat template (the plain template knows system, user, assistant)", i, role);
    const auto c = m.value("content", nlohmann::ordered_json());
    if (c.is_string()) {
      content = c.get<std::string>();
    } else if (c.is_array()) {  // OpenAI's text parts
      for (const auto& part : c) {
        SKY_CHECK(part.is_object() && part.value("type", "") == "text" && part.contains("text") && part["text"].is_string(),
                  "messages[{}].content: only {{\"type\": \"text\", \"text\": ...}} parts are supported", i);
        content += part["text"].get<std::string>();
      }
    } else {
      SKY_CHECK(c.is_null(), "messages[{}].content must be a string or a list of text parts", i);
    }
    plain.push_back({role, content});
  }
  return chat_prompt(plain);
}

}  // namespace

int cmd_generate(int argc, char** argv) {
  CLI::App app{"Generate from a prompt (text through the model's SentencePiece tokenizer, or token ids) with a\n"
               "KV cache. Greedy unless --temperature > 0. Works on f32, bf16 and fp8 checkpoints."};
  app.name("skymoe generate");
  std::string model, prompt_ids, prompt_text, tokenizer, dtype = "auto";
  std::vector<std::string> stops;
  int threads = 0;
  bool json_out = false, stop_eos = false;
  GenParams gp;
  gp.max_tokens = 32;
  app.add_option("--model", model, "model directory (HF layout)")->required();
  auto* ids_opt = app.add_option("--prompt-ids", prompt_ids, "prompt as comma-separated token ids, e.g. 1,5,9");
  auto* text_opt = app.add_option("--prompt", prompt_text, "prompt text (needs a tokenizer)");
  ids_opt->excludes(text_opt);
  bool chat = false;
  std::string messages_path, system_prompt;
  app.add_flag("--chat", chat,
               "--prompt is a user message: render it with the model's chat template (MODEL/chat_template.jinja or\n"
               "tokenizer_config.json; the plain \"User: ...\\nAssistant:\" without one) and stop where the\n"
               "assistant's turn ends (the template's end-of-turn text, eos)");
  auto* msgs_opt = app.add_option("--messages", messages_path,
                                  "a conversation to continue, as for `skymoe chat-template` (implies --chat)");
  msgs_opt->excludes(ids_opt)->excludes(text_opt);
  app.add_option("--system", system_prompt, "with --chat: a system message before the prompt");
    app.add_option("--tokenizer", tokenizer, "tokenizer.json or SentencePiece .model (default: MODEL/tokenizer.json, "
                                            "else MODEL/tokenizer.model, when present)");

  app.add_option("--max-tokens", gp.max_tokens, "tokens to generate")->capture_default_str()->check(positive_int());
  app.add_option("--temperature", gp.sampling.temperature, "sampling temperature (0 = greedy)")->capture_default_str();
  app.add_option("--top-p", gp.sampling.top_p, "nucleus sampling mass")->capture_default_str();
  app.add_option("--top-k", gp.sampling.top_k, "sample among the k most likely tokens (0 = all)")->capture_default_str();
  app.add_option("--seed", gp.sampling.seed, "sampling seed")->capture_default_str();
  app.add_option("--repetition-penalty", gp.repetition_penalty, "penalize tokens already present (1 = off)")
      ->capture_default_str();
  app.add_option("--stop", stops, "stop when this text appears (repeatable; needs a tokenizer)");
  app.add_flag("--stop-at-eos", stop_eos, "stop when the model emits its eos token");
  app.add_option("--dtype", dtype, "weights in memory: auto (as stored) | f32 | bf16 | fp8")->capture_default_str()
      ->check(CLI::IsMember({"auto", "f32", "bf16", "fp8"}));
  std::string lm_head = "auto", kv_dtype = "f32";
  add_lm_head_flag(app, lm_head);
  add_kv_dtype_flag(app, kv_dtype);
  app.add_option("--threads", threads, "threads (0 = all cores)");
  std::string device = "cpu";
  add_device_flag(app, device);
  app.add_flag("--json", json_out, "print {\"prompt_ids\", \"generated_ids\", \"text\"?, \"finish_reason\", ...}");
  std::string logits_out;
  app.add_option("--logits-out", logits_out, "write each step's logits (f32, [steps, vocab]) to this file (tests)");
  TpFlags tpf;
  add_tp_flags(app, tpf);
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;
  Backend& be = backend(device);
  be.set_threads(threads);
  if (!messages_path.empty()) chat = true;
  SKY_CHECK(!prompt_ids.empty() || !prompt_text.empty() || !messages_path.empty(), "give --prompt TEXT or --prompt-ids IDS");
  SKY_CHECK(!chat || prompt_ids.empty(), "--chat takes --prompt TEXT or --messages FILE, not --prompt-ids");
  SKY_CHECK(chat || system_prompt.empty(), "--system needs --chat");
  gp.stop_at_eos = stop_eos || chat;  // a chat reply ends at eos

  std::unique_ptr<Tokenizer> tok;
  if (tokenizer.empty()) tokenizer = find_tokenizer(model);
  if (!tokenizer.empty()) tok = std::make_unique<Tokenizer>(Tokenizer::load(tokenizer));
  SKY_CHECK(tok || (prompt_text.empty() && stops.empty() && !chat),
            "--prompt, --chat and --stop need a tokenizer: pass --tokenizer or put tokenizer.json or tokenizer.model in {}",
            model);

  // The chat prompt's text before the weights load, so a template error comes at once.
  std::optional<ChatTemplate> tpl;
  std::string chat_text;
  if (chat) {
    nlohmann::ordered_json extra, msgs = nlohmann::ordered_json::array();
    if (!messages_path.empty()) {
      msgs = read_conversation(messages_path, &extra);
    } else {
      if (!system_prompt.empty()) msgs.push_back({{"role", "system"}, {"content", system_prompt}});
      msgs.push_back({{"role", "user"}, {"content", prompt_text}});
    }
    tpl = ChatTemplate::from_model_dir(model);
    chat_text = tpl ? tpl->render(msgs, true, extra) : plain_chat_prompt(msgs);
  }

  InferModel m = load_infer_model(model, {dtype, true, lm_head, kv_dtype}, tpf);
  m.be = &be;
  if (m.tp && !m.tp->leader()) {  // tensor parallel: rank 0 generates, this rank runs its slice
    m.tp->follow(m);
    return 0;
  }
  std::FILE* lf = nullptr;
  if (!logits_out.empty()) {
    lf = std::fopen(logits_out.c_str(), "wb");
    SKY_CHECK(lf, "--logits-out: cannot write '{}'", logits_out);
    gp.on_logits = [lf](const float* l, int V) { std::fwrite(l, sizeof(float), size_t(V), lf); };
  }
  std::vector<int32_t> ids, stop_ids;
  if (chat && tpl) {
    // The template writes its own bos (as text: encode() turns it into the id).
    ids = tpl->encode(*tok, chat_text);
    stops.insert(stops.end(), tpl->stop_strings().begin(), tpl->stop_strings().end());
    stop_ids = tpl->stop_token_ids(*tok);
  } else if (chat) {
    ids = tok->encode(chat_text);
    ids.insert(ids.begin(), m.cfg.bos_token_id);
    stops.push_back(kChatStop);
  } else if (!prompt_text.empty()) {
    ids = tok->encode(prompt_text);
    ids.insert(ids.begin(), m.cfg.bos_token_id);
  } else {
    ids = parse_id_list(prompt_ids, "--prompt-ids");
  }
  for (size_t i = 0; i < ids.size(); i++)
    SKY_CHECK(ids[i] >= 0 && ids[i] < m.cfg.vocab_size, "{}: token id {} at position {} is outside the vocabulary [0, {})",
              chat && tpl ? "the chat prompt (tokenizer_config.json's added tokens)" : "--prompt-ids", ids[i], i,
              m.cfg.vocab_size);
  SKY_CHECK(int64_t(ids.size()) + gp.max_tokens <= m.cfg.max_position_embeddings,
            "prompt ({} tokens) + --max-tokens ({}) exceeds max_position_embeddings {}", ids.size(), gp.max_tokens,
            m.cfg.max_position_embeddings);
  if (tok) SKY_CHECK(tok->vocab_size() <= m.cfg.vocab_size, "tokenizer {} has {} tokens but the model only {}",
                     tokenizer, tok->vocab_size(), m.cfg.vocab_size);

  Engine engine(m, {1, int64_t(ids.size()) + gp.max_tokens});
  std::vector<int32_t> out;
  std::string text, reason;
  // Text with stop strings cut (held back while they might still be completing); a chat reply
  // drops the space its first piece usually starts with, as the server does.
  std::optional<OutputText> otext;
  if (tok) otext.emplace(tok.get(), stops, chat);
  const bool stream_text = tok && !json_out;
  auto show = [&](const std::string& piece) {
    text += piece;
    if (stream_text && !piece.empty()) { fmt::print("{}", piece); std::fflush(stdout); }
  };
  auto t0 = std::chrono::steady_clock::now();
  double ttft = 0;
  engine.submit(ids, gp, [&](const TokenEvent& ev) {
    if (ev.token >= 0) {
      if (out.empty()) ttft = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      out.push_back(ev.token);
      if (std::find(stop_ids.begin(), stop_ids.end(), ev.token) != stop_ids.end()) {
        reason = "stop";  // the template's end-of-turn token
        return false;
      }
      if (otext) {
        show(otext->push(ev.token));
        if (otext->stopped()) {
          reason = "stop";
          return false;
        }
      } else if (!json_out) {
        fmt::print("{}{}", out.size() > 1 ? "," : "", ev.token);
        std::fflush(stdout);
      }
    }
    if (ev.done && reason.empty()) reason = ev.finish_reason;
    return true;
  });
  engine.run_until_idle();
  if (otext) show(otext->finish());
  if (m.tp) m.tp->finish();
  if (lf) std::fclose(lf);
  if (reason == "cancelled") reason = "stop";  // cancelled by a stop string
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (json_out) {
    nlohmann::json j = {{"prompt_ids", ids}, {"generated_ids", out}, {"finish_reason", reason}};
    if (tok) j["text"] = text;
    fmt::print("{}\n", j.dump());
  } else {
    fmt::print("\n");
    if (isatty(2))
      fmt::print(stderr, "[{} tokens, {}; first token {:.2f}s, {:.1f} tokens/s after]\n", out.size(), reason, ttft,
                 out.size() > 1 ? (out.size() - 1) / (secs - ttft) : 0.0);
  }
  return 0;
}

}  // namespace sky::cli
