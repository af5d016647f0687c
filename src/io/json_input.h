#pragma once
// JSON that comes from outside (config.json, safetensors headers and indexes, trainer_state.json,
// HTTP request bodies). Nesting is bounded while parsing, so nothing downstream (an error message's
// dump(), a recursive walk) can exhaust the stack on a hostile file; real files nest 3 or 4 levels.
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace sky {

constexpr int kMaxJsonDepth = 64;

// Called for every parse event (nlohmann's parser callback, without the keep/discard choice).
using JsonEvent = std::function<void(int depth, nlohmann::json::parse_event_t, nlohmann::json&)>;

// Throws sky::Error naming `what` (a path, "request body") for invalid JSON, numbers out of range
// and nesting deeper than kMaxJsonDepth.
nlohmann::json parse_json(const char* begin, const char* end, const std::string& what, const JsonEvent& on_event = {});
nlohmann::json parse_json(const std::string& text, const std::string& what);
// The whole file (errors name it).
nlohmann::json read_json_file(const std::string& path);
// The same, keeping each object's keys in file order (what a chat template sees, as Python would).
nlohmann::ordered_json parse_ordered_json(const std::string& text, const std::string& what);
nlohmann::ordered_json read_ordered_json_file(const std::string& path);

}  // namespace sky
