// `skymoe chat-template`: the prompt a model's chat template makes of a conversation, exactly as
// the model would see it (only the tokenizer config is read, no weights).
#include <fmt/format.h>

#include <cstdio>

#include "cli/commands.h"
#include "core/error.h"
#include "io/chat_template.h"
#include "io/json_input.h"

namespace sky::cli {

nlohmann::ordered_json read_conversation(const std::string& path, nlohmann::ordered_json* extra) {
  nlohmann::ordered_json doc = read_ordered_json_file(path);
  if (doc.is_array()) return doc;
  SKY_CHECK(doc.is_object() && doc.contains("messages") && doc["messages"].is_array(),
            "{}: expected a JSON array of messages, or an object with a \"messages\" array", path);
  nlohmann::ordered_json messages = std::move(doc["messages"]);
  doc.erase("messages");
  if (extra) *extra = std::move(doc);  // tools, documents, enable_thinking, ...
  return messages;
}

int cmd_chat_template(int argc, char** argv) {
  CLI::App app{"Render a conversation with the model's chat template (MODEL/chat_template.jinja or\n"
               "tokenizer_config.json's chat_template) and print the prompt exactly, with no newline added.\n"
               "FILE.json: an array of {\"role\", \"content\"} messages, or an object {\"messages\": [...]}\n"
               "whose other keys (tools, documents, ...) become template variables."};
  app.name("skymoe chat-template");
  std::string model, messages_path;
  bool gen_prompt = false, stops = false;
  app.add_option("--model", model, "model directory (only its tokenizer config is read)")->required();
  app.add_option("--messages", messages_path, "conversation JSON file")->required();
  app.add_flag("--add-generation-prompt", gen_prompt, "end with the start of an assistant turn");
  app.add_flag("--stop-strings", stops, "print the end-of-turn stop strings (a JSON array) instead");
  if (int rc = parse(app, argc, argv); rc >= 0) return rc;

  auto tpl = ChatTemplate::from_model_dir(model);
  SKY_CHECK(tpl, "{} has no chat template (no chat_template.jinja, no chat_template in tokenizer_config.json)", model);
  if (stops) {
    fmt::print("{}\n", nlohmann::json(tpl->stop_strings()).dump());
    return 0;
  }
  nlohmann::ordered_json extra;
  const auto messages = read_conversation(messages_path, &extra);
  const std::string prompt = tpl->render(messages, gen_prompt, extra);
  std::fwrite(prompt.data(), 1, prompt.size(), stdout);
  return 0;
}

}  // namespace sky::cli
